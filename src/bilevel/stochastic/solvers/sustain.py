"""SUSTAIN (Khanduri, Zeng, Hong, Wai, Wang, Yang, NeurIPS 2021): MRBO's momentum recursions with the randomised
Neumann estimate.

As :mod:`~bilevel.stochastic.solvers.mrbo`, except that both linear systems use ``Q eta prod_{j=1}^{p} (I - eta
H_{B_j}) r`` with one ``p ~ U{0..Q-1}`` and the same batches for the current and the previous point. Steps:
``rho_t = inner_lr / t^(1/3)``, ``gamma_t = outer_lr / t^(1/3)``, ``beta_t = momentum / t^(2/3)``.
Cost: ``4 + 2p`` inner oracle calls per sample and 4 outer. Memory: the previous point and two directions.
"""
from __future__ import annotations

from ..base import random_neumann, random_neumann_pair
from .mrbo import momentum_build

build = momentum_build("sustain", random_neumann_pair, random_neumann)
