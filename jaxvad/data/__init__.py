"""Data stage: decoding, optical flow, dataset readers, TFDS builders and the grain pipeline.

Imports run one way: `builder` uses `readers`, `synthetic`, `flow` and `video_io`; `pipeline`
reads what `builder` wrote and imports nothing above it.
"""
