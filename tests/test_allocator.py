"""The commands' allocator (jaxvad/allocator.py): a `python -m jaxvad.…` process restarts once
on TCMalloc where it is installed, never loops, and leaves every other process alone."""

import ctypes.util
import os
import subprocess
import sys

import pytest

from jaxvad import allocator


def _run(args: list[str], **env: str) -> str:
    """stdout of `python ARGS` in an environment without any preload or allocator setting."""
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    done = subprocess.run(
        [sys.executable, *args], env={**base, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_only_jaxvad_modules_run_as_commands_are_commands():
    assert allocator.is_command(["python", "-m", "jaxvad.train", "--config=c.py"])
    assert allocator.is_command(["python", "-X", "dev", "-m", "jaxvad.bench.train"])
    assert allocator.is_command(["python", "-m", "jaxvad"])
    assert not allocator.is_command(["python", "-m", "jaxvadx.train"])
    assert not allocator.is_command(["python", "-m", "pytest", "-m", "jaxvad.x"])
    assert not allocator.is_command(["python", "-c", "import jaxvad"])
    assert not allocator.is_command(["python", "script.py", "-m"])
    assert not allocator.is_command(["python", "-m"])


def test_a_restart_preloads_the_library_once_and_keeps_the_command(monkeypatch):
    calls = []
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "jaxvad.train", "--workdir=w"])
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "loaded", lambda: False)
    allocator.use_tcmalloc("libtcmalloc_minimal.so.4")
    [(executable, argv, env)] = calls
    assert (executable, argv) == (sys.executable, ["python", "-m", "jaxvad.train", "--workdir=w"])
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
    assert env[allocator.ENV] == "preloaded"
    # The restarted process (or one whose preload failed) does not restart again; nor does
    # one that asked for the system's allocator, or one that is not a command.
    for value in ("preloaded", "0"):
        monkeypatch.setenv(allocator.ENV, value)
        allocator.use_tcmalloc("libtcmalloc_minimal.so.4")
    monkeypatch.delenv(allocator.ENV)
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest"])
    allocator.use_tcmalloc("libtcmalloc_minimal.so.4")
    assert len(calls) == 1


def test_a_failed_preload_runs_on_with_the_systems_allocator():
    out = _run(
        ["-m", "jaxvad"],
        LD_PRELOAD="libjaxvad_nonexistent.so",
        **{allocator.ENV: "preloaded"},
    )
    assert out == "memory allocator: the system's"


@pytest.mark.skipif(
    ctypes.util.find_library(allocator.LIBRARY) is None,
    reason="libtcmalloc-minimal4 is not installed (.ci/run installs it)",
)
def test_a_command_runs_on_tcmalloc_and_a_library_import_does_not():
    assert _run(["-m", "jaxvad"]) == "memory allocator: TCMalloc"
    assert _run(["-m", "jaxvad"], **{allocator.ENV: "0"}) == (
        "memory allocator: the system's (JAXVAD_TCMALLOC=0)"
    )
    probe = "import jaxvad.allocator as a; print(a.loaded())"
    assert _run(["-c", probe]) == "False"
