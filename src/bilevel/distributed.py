"""Deprecated alias of :mod:`bilevel.parallel` (the library half: reducers, ``data_parallel``, the distributed outer
loop) and :mod:`bilevel.app.launch` (the launcher half: ``--nproc``, torchrun, distributed task runs); import
those instead. ``import bilevel.distributed`` keeps working, with a DeprecationWarning."""
import warnings as _warnings

from bilevel.app.launch import *  # noqa: F401,F403
from bilevel.parallel import *  # noqa: F401,F403

_warnings.warn("bilevel.distributed is deprecated; import bilevel.parallel (library) or bilevel.app.launch "
               "(launcher) instead", DeprecationWarning, stacklevel=2)
