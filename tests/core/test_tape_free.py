"""The tape-free reverse engines (engine="tape_free" / "compiled") against the autograd engine, float64, 1e-10.

The problem is not quadratic (the Hessian depends on x and y), y is a dict and the upper objective depends on x
too, so every term of the reverse pass (the HVPs, the cross products, grad_x F) is exercised.
"""
import pytest
import torch

import bilevel
from bilevel.errors import NonFiniteError
from bilevel.estimators import reverse, tape_free

D = torch.float64
G = torch.Generator().manual_seed(3)
A = torch.randn(12, 4, generator=G, dtype=D)
B = torch.randn(12, generator=G, dtype=D)
X = 0.2 * torch.randn(4, generator=G, dtype=D)
Y0 = {"w": torch.randn(4, generator=G, dtype=D), "b": torch.randn(1, generator=G, dtype=D)}


def lower(x, y):
    r = A @ y["w"] + y["b"] - B
    return (r ** 2).mean() + (torch.exp(x) * y["w"] ** 2).sum() + 0.1 * (y["w"] ** 4).sum() + 0.5 * (y["b"] ** 2).sum()


def upper(x, y):
    return ((A @ y["w"] + y["b"] - B - 0.3) ** 2).mean() + 0.01 * (x ** 2).sum() + 0.1 * (x * y["w"]).sum()


def _flat(t):
    return torch.cat([v.reshape(-1) for v in t.values()]) if isinstance(t, dict) else t


def _close(a, b, tol=1e-10):
    a, b = _flat(a), _flat(b)
    assert float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max())), (a, b)


CASES = [
    ("rhg", {}),
    ("rhg", {"checkpoint": 3}),
    ("rhg", {"checkpoint": 4}),
    ("rhg", {"y_bounds": (-0.4, 0.4)}),
    ("rhg", {"inner_optimizer": "momentum"}),
    ("rhg", {"inner_optimizer": "nesterov", "inner_optimizer_options": {"weight_decay": 0.1}}),
    ("rhg", {"inner_optimizer": "adam"}),
    ("rhg", {"inner_optimizer": "adamw"}),
    ("rhg", {"inner_optimizer": "rmsprop", "inner_optimizer_options": {"centered": True, "momentum": 0.5}}),
    ("trhg", {"truncate": 4}),
    ("trhg", {"truncate": 0}),
    ("bda", {}),
    ("bda", {"alpha": 1.0}),  # upper steps only
    ("bda", {"alpha": 0.0}),  # plain gd steps
    ("bda", {"lower_prox": bilevel.prox.l1(0.05), "checkpoint": 4}),
    ("bigsam", {"bigsam_every": 2}),
]


def _kw(opts):
    kw = dict(opts)
    bounds = kw.pop("y_bounds", None)
    lr = 0.01 if kw.get("inner_optimizer") in ("adam", "adamw", "rmsprop") else 0.1
    return dict(inner_steps=10, inner_lr=lr, y_bounds=bounds, **kw)


@pytest.mark.parametrize("method, opts", CASES, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}"
                                                     for m, o in CASES])
def test_tape_free_equals_the_autograd_engine(method, opts):
    ref = bilevel.hypergrad(upper, lower, X, Y0, method=method, **_kw(opts))
    got = bilevel.hypergrad(upper, lower, X, Y0, method=method, engine="tape_free", **_kw(opts))
    _close(got.grad, ref.grad)
    _close(got.y, ref.y, 1e-12)
    assert abs(got.info["upper"] - ref.info["upper"]) <= 1e-12
    for key in ("lower_grad_norm_first", "lower_grad_norm_last"):
        assert (key in got.info) == (key in ref.info)
        if key in ref.info:
            assert abs(got.info[key] - ref.info[key]) <= 1e-12 * max(1.0, ref.info[key])


def _flat_problem():
    from bilevel._tree import flatten
    from bilevel.problem import Problem

    xf, xs = flatten(X)
    yf, ys = flatten(Y0)
    return Problem.from_user(upper, lower, xs, ys), xf, yf


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
def test_the_gradient_wrt_the_initialization_equals_the_tape(optimizer):
    """wrt_init: the loop's s_bar_0 = d F(x, y_K) / d y0 by autograd (the optimizers' buffers start at zero)."""
    from bilevel.dynamics.optim import inner_optimizer

    problem, xf, yf = _flat_problem()
    dyn = inner_optimizer(problem, 0.05, optimizer)
    ref = reverse.estimate(problem, dyn, xf, yf, 9, wrt_init=True)
    got = tape_free.estimate(problem, dyn, xf, yf, 9, wrt_init=True, checkpoint=4)
    _close(got.grad_x, ref.grad_x)
    _close(got.grad_y0, ref.grad_y0)


@pytest.mark.slow
@pytest.mark.parametrize("method, opts", [
    ("rhg", {"inner_optimizer": "adam", "checkpoint": 4, "compile_block": 3}),  # segments and blocks, remainders
    ("bda", {}),  # K <= compile_block: the whole hypergradient in one graph
], ids=["rhg-adam-blocks", "bda-one-graph"])
def test_compiled_equals_the_autograd_engine(method, opts):
    kw = _kw(opts)
    kw["inner_steps"] = 7
    block = kw.pop("compile_block", None)
    ref = bilevel.hypergrad(upper, lower, X, Y0, method=method, **kw)
    got = bilevel.hypergrad(upper, lower, X, Y0, method=method, engine="compiled", compile_block=block, **kw)
    _close(got.grad, ref.grad)
    _close(got.y, ref.y)


def test_engine_errors_name_the_problem():
    kw = dict(inner_steps=3, inner_lr=0.1)
    with pytest.raises(ValueError, match="engine must be one of 'autograd', 'tape_free', 'compiled'"):
        bilevel.hypergrad(upper, lower, X, Y0, method="rhg", engine="jit", **kw)
    with pytest.raises(ValueError, match="compile_block sets the steps per graph"):
        bilevel.hypergrad(upper, lower, X, Y0, method="rhg", engine="tape_free", compile_block=4, **kw)
    with pytest.raises(ValueError, match="compile_block"):
        bilevel.hypergrad(upper, lower, X, Y0, method="bda", engine="compiled", compile_block=0, **kw)
    with pytest.raises(ValueError, match="compile_step=True belongs to engine='autograd'"):
        bilevel.hypergrad(upper, lower, X, Y0, method="trhg", engine="tape_free", compile_step=True, **kw)
    with pytest.raises(ValueError, match="mini-batches"):
        bilevel.hypergrad(lambda x, y, idx=None: upper(x, y), lambda x, y, idx=None: lower(x, y), X, Y0,
                          method="rhg", engine="tape_free", n_lower=12, batch_size=4, **kw)


def test_module_buffers_are_refused():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()
    stats = bilevel.models.Buffers(net)
    fn = bilevel.models.functional(net, buffers=stats, training=True)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}

    def lo(x, y):
        return (fn(y, A) ** 2).mean() + (x ** 2).sum()

    with pytest.raises(ValueError, match="module buffers"):
        bilevel.hypergrad(lo, lo, X, params, method="rhg", inner_steps=2, inner_lr=0.1, buffers=stats,
                          engine="compiled")


def test_a_diverging_inner_loop_is_named_like_the_autograd_engine():
    with pytest.raises(NonFiniteError, match="inner step"):
        bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=40, inner_lr=50.0, engine="tape_free")
