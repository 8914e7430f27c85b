"""Executable versions of the papers' experiments (the shell layer: they may import anything)."""
