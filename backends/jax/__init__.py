"""flashcore.jax: the native backend (filled in by its own issue). Importing it imports jax."""
