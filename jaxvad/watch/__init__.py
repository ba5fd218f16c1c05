"""Watching live sources: `python -m jaxvad.watch` (`jaxvad.watch.command`).

Modules, from the command down: `command` (flags, the loop, signals, the scores file),
`sources` (reading files, folders, streams and cameras into bounded queues), `stream` (ring
buffers and the batched error step), `events` (hysteresis and the events file), `sinks`
(webhook and MQTT).
"""
