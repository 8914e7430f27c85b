"""The FISTA dynamics against a hand-written accelerated loop, and its schedule."""
import math

import pytest
import torch

from bilevel._tree import flatten
from bilevel.dynamics import nesterov, run
from bilevel.dynamics.nesterov import fista_momentum
from bilevel.problem import Problem


def _problem(H, b, box=None):
    lower = lambda x, y: 0.5 * y @ H @ y - y @ (b * x)
    upper = lambda x, y: (y ** 2).sum()
    _, spec = flatten(torch.zeros(H.shape[0], dtype=H.dtype))
    proj = None if box is None else (lambda y: y.clamp(*box))
    return Problem(upper, lower, spec, spec, proj)


def test_schedule_is_standard_fista():
    t = [1.0]
    for _ in range(30):
        t.append((1 + math.sqrt(1 + 4 * t[-1] ** 2)) / 2)
    assert fista_momentum(0) == 0.0 and fista_momentum(1) == 0.0
    for k in range(1, 30):
        assert fista_momentum(k) == pytest.approx((t[k - 1] - 1) / t[k], rel=1e-15)
    with pytest.raises(ValueError, match="k must be an integer"):
        fista_momentum(-1)


@pytest.mark.parametrize("box", [None, (-0.3, 0.4)])
def test_matches_hand_written_fista(box):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    H = A @ A.T + 0.1 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(5, generator=g, dtype=torch.float64)
    y0 = torch.randn(5, generator=g, dtype=torch.float64)
    lr = float(1 / torch.linalg.eigvalsh(H).max())
    p = _problem(H, b, box)
    dyn = nesterov(p, lr)
    y = run(dyn, x, dyn.init(x, y0), 0, 25, create_graph=False)[0]
    # by hand: Beck & Teboulle with t_1 = 1
    yk, yprev, t = y0.clone(), y0.clone(), 1.0
    for k in range(25):
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        u = yk if k == 0 else yk + beta * (yk - yprev)  # noqa: F821  (beta set below from the previous step)
        new = u - lr * (H @ u - b * x)
        if box is not None:
            new = new.clamp(*box)
        yprev, yk = yk, new
        beta = (t - 1) / t_next
        t = t_next
    assert torch.allclose(y, yk, rtol=1e-12, atol=1e-12)


def test_faster_than_gd_on_ill_conditioned_quadratic():
    H = torch.diag(torch.tensor([1.0, 0.01], dtype=torch.float64))
    b = torch.ones(2, dtype=torch.float64)
    p = _problem(H, b)
    from bilevel.dynamics import gd
    x, y0 = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    ystar = torch.linalg.solve(H, b)
    err = {}
    for name, dyn in (("gd", gd(p, 1.0)), ("fista", nesterov(p, 1.0))):
        err[name] = float(torch.linalg.vector_norm(run(dyn, x, dyn.init(x, y0), 0, 100, create_graph=False)[0] - ystar))
    assert err["fista"] < 0.1 * err["gd"]


def test_constant_momentum_and_validation():
    H = torch.eye(2, dtype=torch.float64)
    p = _problem(H, torch.ones(2, dtype=torch.float64))
    from bilevel.dynamics import gd
    x, y0 = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    a = run(nesterov(p, 0.3, momentum=0.0), x, (y0, y0), 0, 7, create_graph=False)[0]
    d = gd(p, 0.3)
    b = run(d, x, d.init(x, y0), 0, 7, create_graph=False)[0]
    assert torch.allclose(a, b, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="momentum must be"):
        nesterov(p, 0.3, momentum=1.0)
