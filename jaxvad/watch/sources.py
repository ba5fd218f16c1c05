"""Where watched frames come from: video files, folders of frames, network streams and cameras,
each read by its own thread into a small bounded queue.

A source is given as `URI` or `NAME=URI` (NAME: letters, digits, `_`, `-` and `.`). URI is:
- a video file OpenCV reads, or a folder of numbered frames (`jaxvad.data.video_io`);
- a stream OpenCV/FFmpeg opens: `rtsp://`, `rtsps://`, `http://`, `https://`, `udp://`,
  `tcp://`, `rtmp://`;
- a camera index (`0`, `1`, ...).

Its name, in every log line, status line, event and file watch writes, is NAME or else the URI
with any password replaced by `***` (`masked`): credentials never leave the source.

Reading (`Reader`): frames are decoded as they arrive, converted as the dataset preparation
converts them (RGB, `[H, W, C]` uint8), numbered from 1 in arrival order, and put in a queue of
`queue` frames. A live source (a stream or a camera) that outpaces the scorer loses its oldest
frames, counted in `dropped`; a file or folder is read no faster than it is scored (nothing is
dropped: the scores of a file are those of the prepared video). A frame that fails to decode
is skipped and counted in `undecodable` (its number is used up, so later numbers stay those of
the stream). A stream that ends or fails is reopened with exponential backoff (`backoff_s` up to
`max_backoff_s`); each outage is reported through `on_outage(name, started, ended, error)`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from jaxvad.data.video_io import DataError, numbered_images, read_image, to_channels_last

log = logging.getLogger("jaxvad.watch")

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SourceError(ValueError):
    """A source that cannot be used: a bad spec, a duplicate name, or one that does not open."""


def masked(uri: str) -> str:
    """`uri` with the password of its user info replaced by `***` (other URIs unchanged)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = urllib.parse.quote(parts.username or "", safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed `--source`: its `name` (safe to show), the `uri` (never shown) and its `kind`:
    "file", "folder", "stream" or "camera"."""

    name: str
    uri: str
    kind: str

    @property
    def live(self) -> bool:
        """Whether frames arrive on their own clock (old ones are dropped, not waited for)."""
        return self.kind in ("stream", "camera")


def parse_source(spec: str) -> SourceSpec:
    """One `--source` value (see the module docstring); SourceError for an empty one or a
    missing file or folder."""
    name, uri = None, spec
    head, sep, tail = spec.partition("=")
    if sep and _NAME.match(head) and tail and "://" not in head:
        name, uri = head, tail
    if not uri:
        raise SourceError(f"--source={masked(spec)!r}: empty URI")
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in STREAM_SCHEMES:
        kind = "stream"
    elif uri.isdigit():
        kind = "camera"
    else:
        path = Path(uri)
        if not path.exists():
            raise SourceError(f"{masked(uri)}: no such video file or folder of frames")
        kind = "folder" if path.is_dir() else "file"
    return SourceSpec(name or masked(uri), uri, kind)


def parse_sources(specs: list[str]) -> list[SourceSpec]:
    """Every `--source`, SourceError for none or for two with one name."""
    if not specs:
        raise SourceError("give at least one --source")
    sources = [parse_source(s) for s in specs]
    names = collections.Counter(s.name for s in sources)
    twice = [n for n, c in names.items() if c > 1]
    if twice:
        raise SourceError(
            f"two sources named {twice[0]!r}: name each one (--source=NAME=URI) so that their "
            "scores and events can be told apart"
        )
    return sources


class _Capture:
    """Frames of one open source: `read()` → (ok, frame or None); ok False: the source ended."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.files: list[Path] | None = None
        self.capture = None
        if spec.kind == "folder":
            self.files = numbered_images(Path(spec.uri))
            self.next = 0
            return
        target = int(spec.uri) if spec.kind == "camera" else spec.uri
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            raise SourceError(f"{spec.name}: OpenCV cannot open this source")

    def read(self) -> tuple[bool, np.ndarray | None]:
        """(True, frame), (True, None) for a frame that failed to decode, (False, None) at the
        end."""
        if self.files is not None:
            if self.next >= len(self.files):
                return False, None
            path = self.files[self.next]
            self.next += 1
            try:
                return True, read_image(path)
            except DataError:
                return True, None
        if not self.capture.grab():
            return False, None
        ok, frame = self.capture.retrieve()
        return True, (to_channels_last(frame) if ok and frame is not None else None)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


@dataclasses.dataclass
class Counters:
    """Per source: frames `read`, `dropped` (queue full, live sources) and `undecodable`."""

    read: int = 0
    dropped: int = 0
    undecodable: int = 0


class Reader:
    """A thread that reads one source into a bounded queue (see the module docstring).

    `get()` → (frame number, `[H, W, C]` uint8) or None when nothing is waiting; `finished`:
    the source ended for good (a file, a folder, or a stream given up by `stop()`) and its
    queue is empty."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        queue: int,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        on_outage: Callable[[str, float, float, str], None] | None = None,
    ):
        self.spec = spec
        self.counters = Counters()
        self._queue: collections.deque = collections.deque()
        self._size = queue
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self._backoff = (backoff_s, max_backoff_s)
        self._on_outage = on_outage
        self._capture = _Capture(spec)  # Opened now: a source that cannot open fails here.
        self._thread = threading.Thread(target=self._run, name=f"read {spec.name}", daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._ended and not self._queue

    def get(self) -> tuple[int, np.ndarray] | None:
        with self._lock:
            item = self._queue.popleft() if self._queue else None
            self._lock.notify_all()
            return item

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def _put(self, item: tuple[int, np.ndarray]) -> None:
        with self._lock:
            if self.spec.live:
                if len(self._queue) >= self._size:
                    self._queue.popleft()
                    self.counters.dropped += 1
            else:
                while len(self._queue) >= self._size and not self._stop.is_set():
                    self._lock.wait(0.1)
            self._queue.append(item)

    def _run(self) -> None:
        capture, number = self._capture, 0
        try:
            while not self._stop.is_set():
                ok, frame = capture.read()
                if ok:
                    number += 1
                    self.counters.read += 1
                    if frame is None:
                        self.counters.undecodable += 1
                        log.warning(
                            "%s: frame %d could not be decoded: skipped", self.spec.name, number
                        )
                    else:
                        self._put((number, frame))
                    continue
                capture.close()
                if self.spec.kind != "stream":
                    break
                capture = self._reopen()
                if capture is None:
                    break
        finally:
            if capture is not None:
                capture.close()
            with self._lock:
                self._ended = True
                self._lock.notify_all()

    def _reopen(self) -> _Capture | None:
        """The stream reopened after an outage (None when stopped first), with backoff."""
        started = time.time()
        delay, longest = self._backoff
        error = "the stream ended"
        log.warning("%s: stream lost (%s); reconnecting", self.spec.name, error)
        while not self._stop.wait(delay):
            try:
                capture = _Capture(self.spec)
            except SourceError as e:
                error = str(e)
                delay = min(delay * 2, longest)
                continue
            ended = time.time()
            log.warning("%s: reconnected after %.1f s", self.spec.name, ended - started)
            if self._on_outage is not None:
                self._on_outage(self.spec.name, started, ended, error)
            return capture
        return None
