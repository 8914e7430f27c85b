"""Differentiable inner optimizers (``inner_optimizer``): the iterate equals torch.optim's, the hypergradient is the
exact derivative of F(x, y_K(x)) through the optimizer's updates (reverse = forward = finite differences), and the
memory modes (checkpointing, vmap over tasks) give the same numbers."""
import pytest
import torch

import bilevel
from bilevel.dynamics.optim import DEFAULTS, OPTIMIZERS

D = torch.float64
CLASSES = {"momentum": (torch.optim.SGD, {}), "nesterov": (torch.optim.SGD, {"nesterov": True}),
           "adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {}), "rmsprop": (torch.optim.RMSprop, {})}
# (optimizer, its options): defaults, and non-default values of every option
CASES = [("momentum", {}), ("momentum", {"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.1}),
         ("nesterov", {}), ("nesterov", {"momentum": 0.7, "weight_decay": 0.05}),
         ("adam", {}), ("adam", {"betas": (0.8, 0.9), "eps": 1e-3, "weight_decay": 0.1}),
         ("adamw", {}), ("adamw", {"betas": (0.5, 0.95), "eps": 1e-6, "weight_decay": 0.3}),
         ("rmsprop", {}), ("rmsprop", {"alpha": 0.9, "eps": 1e-4, "momentum": 0.6, "centered": True,
                                       "weight_decay": 0.02})]
LR = {"momentum": 0.05, "nesterov": 0.05, "adam": 0.05, "adamw": 0.05, "rmsprop": 0.01}
K = 12


def _data():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 5, generator=g, dtype=D)
    b = torch.randn(7, generator=g, dtype=D)
    x = 0.5 + 0.1 * torch.randn(5, generator=g, dtype=D)
    y0 = torch.randn(5, generator=g, dtype=D)
    return A, b, x, y0


A, B, X, Y0 = _data()


def lower(x, y):  # non-quadratic, strongly convex in y for x > 0
    return 0.5 * ((A @ y - B) ** 2).mean() + 0.5 * (x * y ** 2).sum() + 0.1 * torch.log(torch.cosh(y)).sum()


def upper(x, y):
    return ((y - 1.0) ** 2).sum() + 0.1 * (x ** 2).sum() + (torch.sin(y) * x).sum()


def lower_dict(x, y):
    return lower(x, torch.cat([y["w"].reshape(-1), y["b"]]))


def upper_dict(x, y):
    return upper(x, torch.cat([y["w"].reshape(-1), y["b"]]))


def _torch_loop(name, opts, f, x, params, steps, lr):
    cls, fixed = CLASSES[name]
    kw = dict(DEFAULTS[name], **opts)
    leaves = [p.detach().clone().requires_grad_() for p in params]
    opt = cls(leaves, lr=lr, **kw, **fixed)
    for _ in range(steps):
        opt.zero_grad()
        f(x, leaves).backward()
        opt.step()
    return [p.detach() for p in leaves]


@pytest.mark.parametrize("name, opts", CASES)
def test_iterate_equals_torch_optim_for_tensors(name, opts):
    res = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=K, inner_lr=LR[name],
                            inner_optimizer=name, inner_optimizer_options=opts)
    (ref,) = _torch_loop(name, opts, lambda x, ps: lower(x, ps[0]), X, [Y0], K, LR[name])
    torch.testing.assert_close(res.y, ref, rtol=0, atol=1e-12)
    assert not torch.equal(res.y, Y0)


@pytest.mark.parametrize("name, opts", CASES)
def test_iterate_equals_torch_optim_for_dicts(name, opts):
    y0 = {"w": Y0[:4].reshape(2, 2).clone(), "b": Y0[4:].clone()}
    res = bilevel.hypergrad(upper_dict, lower_dict, X, y0, method="rhg", inner_steps=K, inner_lr=LR[name],
                            inner_optimizer=name, inner_optimizer_options=opts)
    w, b = _torch_loop(name, opts, lambda x, ps: lower_dict(x, {"w": ps[0], "b": ps[1]}), X, [y0["w"], y0["b"]],
                       K, LR[name])
    torch.testing.assert_close(res.y["w"], w, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.y["b"], b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, opts", [("adam", {}), ("momentum", {}), ("nesterov", {"weight_decay": 0.1}),
                                        ("adamw", {}), ("rmsprop", {"centered": True, "momentum": 0.5})])
def test_reverse_equals_forward_equals_finite_differences(name, opts):
    kw = dict(inner_steps=K, inner_lr=LR[name], inner_optimizer=name, inner_optimizer_options=opts)
    rev = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", **kw)
    fwd = bilevel.hypergrad(upper, lower, X, Y0, method="fhg", **kw)
    torch.testing.assert_close(rev.grad, fwd.grad, rtol=0, atol=1e-10)
    check = bilevel.check_hypergrad(upper, lower, X, Y0, method="rhg", rtol=1e-6, atol=1e-9, **kw)
    assert check.ok, check


def test_checkpointed_equals_plain_with_adam():
    kw = dict(inner_steps=K, inner_lr=0.05, inner_optimizer="adam")
    plain = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", **kw)
    for s in (1, 3, 5):
        ck = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", checkpoint=s, **kw)
        torch.testing.assert_close(ck.grad, plain.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ck.y, plain.y, rtol=0, atol=0)


def test_vmap_over_tasks_equals_a_loop_with_adam():
    """Tasks stacked on y's leading axis with a vmapped per-task loss: Adam acts elementwise, so the tasks' inner
    loops are independent and the stacked hypergradient is the sum of the per-task ones."""
    g = torch.Generator().manual_seed(1)
    T = 3
    As = torch.randn(T, 6, 4, generator=g, dtype=D)
    bs = torch.randn(T, 6, generator=g, dtype=D)
    x = 0.3 + 0.1 * torch.rand(4, generator=g, dtype=D)
    y0 = torch.randn(T, 4, generator=g, dtype=D)

    def task_lower(x, y, a, b):
        return 0.5 * ((a @ y - b) ** 2).mean() + 0.5 * (x * y ** 2).sum() + 0.1 * torch.log(torch.cosh(y)).sum()

    def task_upper(x, y, a, b):
        return ((a @ y - 1.0) ** 2).mean() + (torch.sin(y) * x).sum()

    def stacked(fn):
        return lambda x, y: torch.func.vmap(fn, in_dims=(None, 0, 0, 0))(x, y, As, bs).sum()

    kw = dict(method="rhg", inner_steps=K, inner_lr=0.05, inner_optimizer="adam")
    res = bilevel.hypergrad(stacked(task_upper), stacked(task_lower), x, y0, **kw)
    loop = [bilevel.hypergrad(lambda x, y, j=j: task_upper(x, y, As[j], bs[j]),
                              lambda x, y, j=j: task_lower(x, y, As[j], bs[j]), x, y0[j], **kw) for j in range(T)]
    torch.testing.assert_close(res.grad, sum(r.grad for r in loop), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.y, torch.stack([r.y for r in loop]), rtol=0, atol=1e-12)


def test_a_coordinate_with_zero_gradient_gives_no_nan():
    """A y component f does not depend on keeps Adam's v = 0; the square root's derivative there is taken as 0
    (the midpoint of its one-sided derivatives), so the hypergradient is finite and still exact."""

    def lower_dead(x, y):
        return lower(x, y[:5]) + 0.0 * y[5]

    def upper_dead(x, y):
        return upper(x, y[:5]) + y[5] ** 2

    y0 = torch.cat([Y0, torch.tensor([0.7], dtype=D)])
    for name in ("adam", "adamw", "rmsprop"):
        kw = dict(inner_steps=K, inner_lr=0.05, inner_optimizer=name)
        res = bilevel.hypergrad(upper_dead, lower_dead, X, y0, method="rhg", **kw)
        assert torch.isfinite(res.grad).all()
        decay = (1 - 0.05 * DEFAULTS["adamw"]["weight_decay"]) ** K if name == "adamw" else 1.0
        assert float(res.y[5]) == pytest.approx(0.7 * decay, rel=1e-14)  # the dead coordinate only decays
        fwd = bilevel.hypergrad(upper_dead, lower_dead, X, y0, method="fhg", **kw)
        torch.testing.assert_close(res.grad, fwd.grad, rtol=0, atol=1e-10)
        assert bilevel.check_hypergrad(upper_dead, lower_dead, X, y0, method="rhg", rtol=1e-6, atol=1e-9, **kw).ok


@pytest.mark.parametrize("method", ["trhg", "iaptt", "iagm", "maml", "fomaml", "reptile"])
def test_every_unrolled_method_runs_the_optimizer(method):
    """y_K (y_kbar for iaptt) is the torch.optim iterate, and truncation / PTT / first-order estimates use it."""
    kw = dict(inner_steps=K, inner_lr=0.05, inner_optimizer="adam")
    res = bilevel.hypergrad(upper, lower, X, Y0, method=method, **kw)
    (ref,) = _torch_loop("adam", {}, lambda x, ps: lower(x, ps[0]), X, [Y0], K, 0.05)
    if method == "iaptt":
        k = int(res.info["k_bar"])
        (ref,) = _torch_loop("adam", {}, lambda x, ps: lower(x, ps[0]), X, [Y0], k, 0.05)
    torch.testing.assert_close(res.y, ref, rtol=0, atol=1e-12)
    assert torch.isfinite(res.grad).all()
    if method == "trhg":  # truncation at K: the full reverse pass
        full = bilevel.hypergrad(upper, lower, X, Y0, method="trhg", truncate=K, **kw)
        rhg = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", **kw)
        torch.testing.assert_close(full.grad, rhg.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_methods_with_a_converged_optimizer_give_the_implicit_hypergradient(method):
    """The implicit estimators need only a converged y_K: with Adam or momentum they match gradient descent (the
    Neumann series' own step ``neumann_lr`` defaults to ``inner_lr``, which an Adam step does not fit: set it)."""
    opts = {"cg": {"cg_steps": 50}, "neumann": {"neumann_terms": 400, "neumann_tol": None, "neumann_lr": 0.3}}[method]
    gd = bilevel.hypergrad(upper, lower, X, Y0, method=method, inner_steps=3000, inner_lr=0.3, **opts)
    for name, lr in (("adam", 0.01), ("momentum", 0.1)):
        res = bilevel.hypergrad(upper, lower, X, Y0, method=method, inner_steps=3000, inner_lr=lr,
                                inner_optimizer=name, **opts)
        torch.testing.assert_close(res.y, gd.y, rtol=0, atol=1e-8)
        torch.testing.assert_close(res.grad, gd.grad, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["bda", "bigsam", "bvfim", "iagm-a", "metasgd"])
def test_methods_with_their_own_dynamics_refuse_an_inner_optimizer(method):
    with pytest.raises(ValueError, match="has its own inner dynamics"):
        bilevel.hypergrad(upper, lower, X, Y0, method=method, inner_steps=2, inner_lr=0.1, inner_optimizer="adam")


@pytest.mark.parametrize("kw, match", [
    ({"inner_optimizer": "lbfgs"}, "inner_optimizer must be one of"),
    ({"inner_optimizer": "adam", "inner_optimizer_options": {"momentum": 0.9}}, "allowed: betas, eps, weight_decay"),
    ({"inner_optimizer": "gd", "inner_optimizer_options": {"eps": 1.0}}, "plain gradient descent has no options"),
    ({"inner_optimizer": "adam", "inner_optimizer_options": {"betas": (0.9, 1.0)}}, r"betas\[1\] must be in"),
    ({"inner_optimizer": "nesterov", "inner_optimizer_options": {"dampening": 0.1}}, "nesterov needs"),
    ({"inner_optimizer": "rmsprop", "inner_optimizer_options": {"centered": 1}}, "centered must be True or False"),
    ({"inner_optimizer": "adam", "inner_optimizer_options": [("eps", 1.0)]}, "must be a dict"),
    ({"inner_optimizer": "adam", "checkpoint": 2, "compile_step": True}, "compiles plain gradient-descent"),
])
def test_bad_optimizer_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=2, inner_lr=0.1, **kw)


def test_gd_is_the_default_and_unchanged():
    a = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=K, inner_lr=0.1)
    b = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=K, inner_lr=0.1, inner_optimizer="gd")
    assert torch.equal(a.grad, b.grad) and torch.equal(a.y, b.y)
    assert set(OPTIMIZERS) == set(DEFAULTS)
