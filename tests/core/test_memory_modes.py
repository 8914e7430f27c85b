"""Memory modes return the same hypergradient as the plain method, and really store less."""
import pytest
import torch

import bilevel
from bilevel.estimators import reverse
from bilevel.problems import make_quadratic

REVERSE_METHODS = ["rhg", "trhg", "bda", "bigsam", "iaptt", "iagm", "iagm-a"]


@pytest.mark.parametrize("method", REVERSE_METHODS)
@pytest.mark.parametrize("segment", [1, 3, 7, 40])
def test_checkpoint_gives_the_same_hypergradient(method, segment):
    q = make_quadratic(3, 5, 31)
    opts = {"truncate": 12} if method == "trhg" else {}
    kw = dict(method=method, inner_steps=20, inner_lr=q["lr"], y_bounds=(-2.0, 2.0), **opts)
    plain = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], **kw)
    ckpt = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], checkpoint=segment, **kw)
    assert torch.allclose(ckpt.grad, plain.grad, rtol=1e-12, atol=1e-14)
    assert torch.equal(ckpt.y, plain.y)
    if plain.grad_y0 is not None:
        assert torch.allclose(ckpt.grad_y0, plain.grad_y0, rtol=1e-12, atol=1e-14)
    assert ckpt.info["lower_grad_norm_last"] == pytest.approx(plain.info["lower_grad_norm_last"], rel=1e-12)


def test_checkpoint_validation():
    q = make_quadratic(2, 2, 32)
    with pytest.raises(ValueError, match="checkpoint must be"):
        bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="rhg", inner_steps=4, inner_lr=0.1,
                          checkpoint=0)
    with pytest.raises(ValueError, match="unknown option.*checkpoint"):
        bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="cg", inner_steps=4, inner_lr=0.1,
                          checkpoint=2)


def _saved_bytes(fn):
    """Peak bytes of tensors held by autograd for backward while ``fn`` runs (forward and backward)."""
    live, peak = [0], [0]

    class Held:
        def __init__(self, t):
            self.t, self.n = t, t.numel() * t.element_size()
            live[0] += self.n
            peak[0] = max(peak[0], live[0])

        def __del__(self):
            live[0] -= self.n

    with torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t):
        fn()
    return peak[0]


def test_checkpoint_stores_segment_boundaries_only():
    """Peak saved-for-backward bytes: O(K) for the plain tape, O(K/S + S) for checkpoint=S."""
    q = make_quadratic(3, 50, 33)
    from bilevel.api import _setup

    def tape(K, S):
        meth, steps, lr, problem, xf, yf = _setup(q["upper"], q["lower"], q["x"], q["y0"], "rhg", K, q["lr"], None)
        plan = meth.bind(problem, lr, steps, {"checkpoint": S} if S else {})
        return _saved_bytes(lambda: plan.estimate(xf, yf, steps))

    plain_100, plain_400 = tape(100, None), tape(400, None)
    ck_100, ck_400 = tape(100, 20), tape(400, 20)
    assert plain_400 > 3.5 * plain_100          # grows linearly with K
    assert ck_400 < plain_400 / 10              # segment boundaries only
    assert ck_400 < 1.2 * ck_100                # dominated by one recomputed segment: ~constant in K


@pytest.mark.parametrize("method", ["fhg", "cg", "neumann", "bvfim"])
def test_forward_and_implicit_methods_keep_no_trajectory(method):
    """Peak saved-for-backward bytes do not grow with K (fhg with a scalar hyperparameter, implicit, bvfim)."""
    q = make_quadratic(1, 50, 34)
    from bilevel.api import _setup

    def peak(K):
        meth, steps, lr, problem, xf, yf = _setup(q["upper"], q["lower"], q["x"], q["y0"], method, K, q["lr"], None)
        plan = meth.bind(problem, lr, steps, {})
        return _saved_bytes(lambda: plan.estimate(xf, yf, steps))

    assert peak(400) <= 1.05 * peak(50)
