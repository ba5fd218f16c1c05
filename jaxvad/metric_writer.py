"""Training metrics on disk: TensorBoard event files (tensorboardX) and one JSON line per write.

clu's metric writers import TensorFlow, which jaxvad does not depend on; tensorboardX writes the
same event files. `WORKDIR/metrics.jsonl` holds `{"step": s, "<name>": value, ...}` per line,
appended across resumed runs (a step logged twice, before and after a kill, appears twice with
the same values). Only process 0 writes; on other processes the writer does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
    """Scalars to `LOGDIR/tensorboard/` and `LOGDIR/metrics.jsonl`."""

    def __init__(self, logdir: str | Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        if not self.enabled:
            return
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self._tensorboard = SummaryWriter(str(logdir / "tensorboard"))
        self._jsonl = (logdir / "metrics.jsonl").open("a")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tensorboard.close()
            self._jsonl.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl` in file order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
