"""Deprecated alias of :mod:`bilevel.app.data` (moved to the app layer); import that instead.

``import bilevel.data`` and ``from bilevel.data.<module> import ...`` keep working, with a DeprecationWarning: every
submodule is the very module object of ``bilevel.app.data``, registered under its old name.
"""
import importlib as _importlib
import sys as _sys
import warnings as _warnings

from bilevel.app.data import *  # noqa: F401,F403

_warnings.warn("bilevel.data is deprecated; import bilevel.app.data instead", DeprecationWarning, stacklevel=2)

for _name in ("cli", "digits", "episodes", "fetch", "hyperclean", "idx", "images", "rotated", "sources"):
    _module = _importlib.import_module(f"bilevel.app.data.{_name}")
    _sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
if __name__ == "__main__":
    raise SystemExit(_importlib.import_module("bilevel.app.data.cli").main())
