"""The first-order family approaches the bilevel solution as each paper's parameter is tightened (float64).

On the strongly convex quadratic ``make_simple_quadratic(3, 5, 0)`` (closed-form x*), each method that claims
convergence to the bilevel solution is run at a loose and at a tight setting of the parameter its paper prescribes
tightening, from x0 = 0 with SGD on x, long enough to settle at each; the relative error ||x - x*|| / ||x*|| must
shrink at least 5x. The settings and the errors measured on the dev machine (benchmarks/first_order/sweeps.py) are
in each method's docs page.
"""
import math
import warnings

import pytest
import torch

import bilevel
from bilevel.problems import make_simple_quadratic

UPPER, LOWER, _, X_STAR, LR = make_simple_quadratic(3, 5, 0)


def _error(method, outer_lr, steps, inner_steps, **options):
    loop = bilevel.OuterLoop(torch.zeros(3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), method=method,
                             outer_lr=outer_lr, outer_optimizer="sgd", inner_steps=inner_steps, inner_lr=LR, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(steps):
            loop.step(UPPER, LOWER)
    return float(torch.linalg.vector_norm(loop.x - X_STAR) / torch.linalg.vector_norm(X_STAR))


# method: (loose setting, tight setting), each (outer_lr, outer steps, inner steps, options)
SWEEPS = {
    "vpbgd": ((0.05 / 2, 1000, 10, {"gamma": 1.0}), (0.05 / 17, 3000, 10, {"gamma": 16.0})),
    "f2sa": ((0.05 / 2, 500, 3, {"lam": 1.0, "lam_power": 0.0}),
             (0.05 / 15, 3000, 3, {"lam": 1.0, "lam_power": 1.0 / 3.0})),  # the paper's growing multiplier
    "bome": ((0.05, 2000, 1, {"y_lr": 0.05}), (0.02, 2000, 20, {"y_lr": 0.02})),  # smaller step, more inner steps
    "meha": ((0.05, 1000, 1, {"c": 1.0, "p": 0.0}), (0.3, 3000, 1, {"c": 100.0, "p": 0.0})),
    "bamm": ((0.02, 1000, 1, {"mu0": 0.5, "p": math.inf}), (0.02, 1000, 1, {"mu0": 0.02, "p": math.inf})),
    "gaffo": ((0.05, 1000, 1, {"c": 1.0, "p": 0.0}), (0.05, 6000, 1, {"c": 100.0, "p": 0.0})),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SWEEPS))
def test_tightening_the_parameter_approaches_x_star(method):
    loose, tight = SWEEPS[method]
    e_loose = _error(method, loose[0], loose[1], loose[2], **loose[3])
    e_tight = _error(method, tight[0], tight[1], tight[2], **tight[3])
    assert e_loose > 0.1  # the loose setting is visibly biased
    assert e_tight * 5 <= e_loose, (method, e_loose, e_tight)
