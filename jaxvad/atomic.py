"""Atomic writes: a file or a folder appears complete under its name, or not at all.

Both helpers write into a temporary sibling (same folder, so the final rename stays on one file
system and is atomic) and rename it over the target only when the `with` block finishes; an
exception (or a kill) leaves the target as it was. A killed process may leave its hidden
temporary sibling (`.NAME.tmp-*`) behind, never a half-written target.

    with atomic.file(path) as tmp:      # a file
        np.savez(tmp, ...)
    atomic.write_text(path, text)        # the same, for text
    with atomic.folder(out) as staging:  # a folder, replacing an older `out` once complete
        (staging / "a.json").write_text(...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path` (ending in `suffix`, e.g. ".npz" for numpy's
    writers) to write; renames it to `path` when the block succeeds, removes it otherwise."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, newline: str | None = None) -> Path:
    """Writes `text` (UTF-8) to `path` atomically; `newline` as in `open` ("" for CSV)."""
    with file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline=newline)
    return Path(path)


@contextlib.contextmanager
def folder(path: str | os.PathLike, *, replace: bool = True, suffix: str = "") -> Iterator[Path]:
    """Yields an empty temporary folder beside `path` to fill; when the block succeeds it is
    renamed to `path` (an existing `path` is removed first when `replace`; otherwise the rename
    fails with OSError if `path` exists and is not empty). Removed when anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder.
        if replace and path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
