"""Inner dynamics: how the lower-level iterate moves (see :mod:`bilevel.dynamics.base`)."""
from .base import Dynamics, State, run
from .aggregation import aggregation
from .barrier import barrier_gd
from .gd import gd
from .nesterov import nesterov
from .metasgd import metasgd
from .optim import adam, inner_optimizer, momentum, rmsprop

__all__ = ["Dynamics", "State", "run", "aggregation", "barrier_gd", "gd", "nesterov", "metasgd", "momentum", "adam",
           "rmsprop", "inner_optimizer"]
