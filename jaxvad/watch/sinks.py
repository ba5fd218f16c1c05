"""Where event records go besides the events file: `--sink=webhook:URL` (an HTTP POST of each
record as JSON) and `--sink=mqtt://HOST:PORT/TOPIC` (a publish of each record, paho-mqtt).

Each sink has its own thread and queue, so scoring never waits for a network: a record is
queued and the call returns. Sending is rate-limited (`rate` records per second at most; a
queue of `backlog` records, the oldest dropped and counted beyond it) and a failed send is
logged and retried with backoff, the record kept at the head of the queue.

Credentials never come from the command line: a webhook's bearer token is read from
`JAXVAD_WEBHOOK_TOKEN`, MQTT's user and password from `JAXVAD_MQTT_USERNAME` and
`JAXVAD_MQTT_PASSWORD`. A sink's URL with user info is refused (SinkError), so no password is
ever in a flag, a log line or a status line.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger("jaxvad.watch")


class SinkError(ValueError):
    """A malformed or unusable `--sink`."""


class Sink:
    """A background sender of records (see the module docstring); `send(record)` → None or
    raises on failure; `name`: what logs call it."""

    def __init__(
        self,
        name: str,
        send: Callable[[dict[str, Any]], None],
        *,
        rate: float = 5.0,
        backlog: int = 1000,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ):
        self.name = name
        self._send = send
        self._gap = 1.0 / rate
        self._queue: collections.deque = collections.deque()
        self._backlog = backlog
        self.dropped = 0
        self.sent = 0
        self._retry = (retry_s, max_retry_s)
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"sink {name}", daemon=True)
        self._thread.start()

    def __call__(self, record: dict[str, Any]) -> None:
        with self._wake:
            if len(self._queue) >= self._backlog:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(record)
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Sends what is queued for up to `timeout` s, then stops."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=1)
        if self._queue:
            log.warning("sink %s: %d record(s) not sent at exit", self.name, len(self._queue))

    def _run(self) -> None:
        delay = self._retry[0]
        while True:
            with self._wake:
                while not self._queue and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                record = self._queue[0]
            try:
                self._send(record)
            except Exception as e:  # Any failure is logged and retried.
                log.warning("sink %s: send failed (%s); retrying in %.0f s", self.name, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            delay = self._retry[0]
            with self._wake:
                if self._queue and self._queue[0] is record:
                    self._queue.popleft()
            self.sent += 1
            time.sleep(self._gap)


def _webhook(url: str) -> Callable[[dict[str, Any]], None]:
    token = os.environ.get("JAXVAD_WEBHOOK_TOKEN")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def send(record: dict[str, Any]) -> None:
        request = urllib.request.Request(
            url, data=json.dumps(record).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    return send


def _mqtt(host: str, port: int, topic: str) -> Callable[[dict[str, Any]], None]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    user = os.environ.get("JAXVAD_MQTT_USERNAME")
    if user:
        client.username_pw_set(user, os.environ.get("JAXVAD_MQTT_PASSWORD"))
    state = {"connected": False}

    def send(record: dict[str, Any]) -> None:
        if not state["connected"]:
            client.connect(host, port)
            client.loop_start()
            state["connected"] = True
        info = client.publish(topic, json.dumps(record), qos=1)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            state["connected"] = False
            client.loop_stop()
            raise ConnectionError(f"not published to {host}:{port}")

    return send


def parse_sink(spec: str, **limits: Any) -> Sink:
    """One `--sink` (see the module docstring); SinkError for a malformed one."""
    if spec.startswith("webhook:"):
        url = spec[len("webhook:") :]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkError(f"--sink={spec!r}: webhook:URL needs an http(s) URL with a host")
        if parts.username or parts.password:
            raise SinkError(
                "--sink: no credentials in a webhook URL; set JAXVAD_WEBHOOK_TOKEN instead"
            )
        return Sink(f"webhook {parts.hostname}", _webhook(url), **limits)
    if spec.startswith("mqtt://"):
        parts = urllib.parse.urlsplit(spec)
        topic = parts.path.lstrip("/")
        if parts.username or parts.password:
            raise SinkError(
                "--sink: no credentials in an MQTT URL; set JAXVAD_MQTT_USERNAME and "
                "JAXVAD_MQTT_PASSWORD instead"
            )
        try:
            port = parts.port or 1883
        except ValueError:
            port = None
        if not parts.hostname or not topic or port is None:
            raise SinkError(f"--sink={spec!r}: mqtt://HOST:PORT/TOPIC needs a host and a topic")
        return Sink(
            f"mqtt {parts.hostname}:{port}/{topic}", _mqtt(parts.hostname, port, topic), **limits
        )
    raise SinkError(f"--sink={spec!r}: webhook:URL or mqtt://HOST:PORT/TOPIC")
