"""Inner dynamics: how the lower-level iterate moves (see :mod:`bilevel.dynamics.base`)."""
from .base import Dynamics, State, run
from .gd import gd

__all__ = ["Dynamics", "State", "run", "gd"]
