"""Benchmark scripts: each prints measured numbers (`python -m jaxvad.bench.<name>`)."""
