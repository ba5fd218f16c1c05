"""jaxvad: explainable video anomaly detection in JAX/Flax."""
