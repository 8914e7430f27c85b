"""A Method object is accepted wherever a method name is, without registration, and gives the same numbers as
the registered method it composes; OuterLoop.synchronize applies a function to the shared state in place."""
import pytest
import torch

import bilevel
from bilevel.dynamics import gd
from bilevel.estimators import reverse
from bilevel.methods import unrolled

A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)


def upper(x, y):
    return 0.5 * ((y - 1.0) ** 2).sum() + 0.1 * (x ** 2).sum()


def lower(x, y):
    return 0.5 * y @ A @ y - x @ y


X = torch.tensor([0.3, -0.2], dtype=torch.float64)
Y0 = torch.zeros(2, dtype=torch.float64)


def _build(problem, inner_lr, inner_steps, *, scale=1.0):
    return unrolled(reverse.estimate, problem, gd(problem, scale * inner_lr))


MINE = bilevel.Method("my-rhg", _build, summary="rhg with a scaled step")


def test_unregistered_method_object_is_not_in_the_registry():
    assert "my-rhg" not in bilevel.METHODS


def test_hypergrad_with_a_method_object_equals_the_registered_one():
    mine = bilevel.hypergrad(upper, lower, X, Y0, method=MINE, inner_steps=20, inner_lr=0.4)
    ref = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=20, inner_lr=0.4)
    assert torch.equal(mine.grad, ref.grad)
    # the option is the build's keyword-only parameter: scale 0.5 is rhg at half the step
    half = bilevel.hypergrad(upper, lower, X, Y0, method=MINE, inner_steps=20, inner_lr=0.4, scale=0.5)
    ref_half = bilevel.hypergrad(upper, lower, X, Y0, method="rhg", inner_steps=20, inner_lr=0.2)
    assert torch.equal(half.grad, ref_half.grad)


def test_solve_outerloop_and_check_take_a_method_object():
    kw = dict(outer_steps=5, outer_lr=0.1, inner_steps=20, inner_lr=0.4, outer_optimizer="sgd")
    a = bilevel.solve(upper, lower, X, Y0, method=MINE, **kw)
    b = bilevel.solve(upper, lower, X, Y0, method="rhg", **kw)
    assert torch.equal(a.x, b.x)
    loop = bilevel.OuterLoop(X, Y0, method=MINE, outer_lr=0.1, outer_optimizer="sgd", inner_steps=20, inner_lr=0.4)
    for _ in range(5):
        loop.step(upper, lower)
    assert torch.equal(loop.x, b.x)
    check = bilevel.check_hypergrad(upper, lower, X, Y0, method=MINE, inner_steps=20, inner_lr=0.4, scale=0.5)
    assert check.ok and check.max_rel_error < 1e-6


def test_method_object_options_are_checked_by_name():
    with pytest.raises(ValueError, match="unknown option.*'sacle'.*'my-rhg'.*scale"):
        bilevel.hypergrad(upper, lower, X, Y0, method=MINE, inner_steps=5, inner_lr=0.4, sacle=2.0)


@pytest.mark.parametrize("bad", [3, None, bilevel.hypergrad])
def test_method_must_be_a_name_or_a_method(bad):
    with pytest.raises(ValueError, match="method must be the name of a registered method.*or a bilevel.Method"):
        bilevel.hypergrad(upper, lower, X, Y0, method=bad, inner_steps=5, inner_lr=0.4)


def test_unknown_name_still_lists_the_methods():
    with pytest.raises(ValueError, match="unknown method 'nope'; valid methods are: .*rhg"):
        bilevel.hypergrad(upper, lower, X, Y0, method="nope", inner_steps=5, inner_lr=0.4)


@pytest.mark.parametrize("method, warm", [("rhg", False), ("rhg", True), ("iaptt", False)])
def test_synchronize_applies_fn_to_x_and_the_initialization(method, warm):
    loop = bilevel.OuterLoop(X, Y0 + 0.25, method=method, outer_lr=0.1, inner_steps=5, inner_lr=0.4, warm_start=warm)
    if warm:
        loop.step(upper, lower)                      # the next start is the last iterate, a tensor of its own
    before_x, before_y0 = loop.x, loop.y0
    seen = []

    def fn(t):
        seen.append(t.numel())
        t.mul_(2.0)

    loop.synchronize(fn)
    assert torch.equal(loop.x, 2 * before_x) and torch.equal(loop.y0, 2 * before_y0)
    assert len(seen) == (3 if warm else 2)
