"""JAX-jit references of the library's methods (optional benchmark group; JAX runs in its own venv)."""
