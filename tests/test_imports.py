"""Imports run one way, from the entry points down to the stages (read from the source with
`ast`, following every `jaxvad` import transitively)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

ENTRY_POINTS = (
    "jaxvad.train",
    "jaxvad.evaluate",
    "jaxvad.explain.command",
    "jaxvad.data_prep",
    "jaxvad.features",
)


def module_path(name: str) -> Path:
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def is_module(name: str) -> bool:
    return module_path(name).is_file()


def direct_imports(name: str) -> set[str]:
    """The jaxvad modules `name` imports (`import a.b`, `from a import b`, `from a.b import c`;
    a package's `__init__` counts as a module)."""
    found = set()
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    found = {m for m in found if m.split(".")[0] == "jaxvad" and is_module(m)}
    # Importing a.b.c runs the packages a and a.b too.
    return found | {".".join(m.split(".")[:k]) for m in found for k in range(2, m.count(".") + 1)}


def reachable(name: str) -> set[str]:
    """Every jaxvad module importing `name` loads (itself excluded)."""
    seen, todo = set(), [name]
    while todo:
        for module in direct_imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen - {name}


def test_the_import_reader_sees_known_imports():
    # The check below must not pass by reading nothing.
    assert {"jaxvad.detector", "jaxvad.explain.gradcam", "jaxvad.data.pipeline"} <= reachable(
        "jaxvad.explain.command"
    )
    assert "jaxvad.model.predictor" in reachable("jaxvad.train")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_entry_point_imports_another(entry):
    others = set(ENTRY_POINTS) - {entry}
    assert not reachable(entry) & others, sorted(reachable(entry) & others)


def test_the_score_arithmetic_needs_no_devices_checkpoints_or_pipeline():
    below = reachable("jaxvad.scoring")
    for stage in ("jaxvad.checkpoint", "jaxvad.distributed", "jaxvad.data.pipeline"):
        assert stage not in below, stage
    source = ast.parse(module_path("jaxvad.scoring").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(source)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"jax", "flax", "orbax", "grain", "ml_collections"}, imported
