"""jaxvad: explainable video anomaly detection in JAX/Flax."""

from jaxvad import allocator

# A command (`python -m jaxvad.…`) restarts on TCMalloc before it imports JAX; see allocator.
allocator.use_tcmalloc()
