"""Deprecated alias of :mod:`bilevel.app.tasks` (moved to the app layer); import that instead.

``import bilevel.tasks`` and ``from bilevel.tasks.<module> import ...`` keep working, with a DeprecationWarning: every
submodule is the very module object of ``bilevel.app.tasks``, registered under its old name.
"""
import importlib as _importlib
import sys as _sys
import warnings as _warnings

from bilevel.app.tasks import *  # noqa: F401,F403

_warnings.warn("bilevel.tasks is deprecated; import bilevel.app.tasks instead", DeprecationWarning, stacklevel=2)

for _name in ("base", "fewshot", "fewshot_init", "hyperclean", "metrics", "toy"):
    _module = _importlib.import_module(f"bilevel.app.tasks.{_name}")
    _sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
