"""bilevel.schedules (alpha_k helpers) and bilevel.prox (l1 / box proximal maps)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bilevel import prox, schedules
from bilevel._tree import as_box, flatten

D = torch.float64


# ------------------------------------------------------------------ schedules
def test_schedule_values():
    assert [schedules.constant(0.3)(k) for k in (1, 5)] == [0.3, 0.3]
    assert schedules.inverse(0.5)(1) == 0.5 and schedules.inverse(0.5)(4) == 0.125
    assert schedules.power(0.25)(16) == pytest.approx(0.5, rel=1e-15)
    assert schedules.power(2.0, c=3.0)(2) == pytest.approx(0.75)
    assert schedules.power(0.0, c=0.4)(7) == pytest.approx(0.4)
    g = schedules.geometric(0.5, 0.9)
    assert g(1) == pytest.approx(0.45) and g(3) == pytest.approx(0.5 * 0.9 ** 3)


def test_bda_theory_schedule_matches_proposition_1():
    s_u, sigma, L_F, gamma, eps = 0.7, 1.0, 1.0, 1.0, 0.1
    beta = math.sqrt(1 - 2 * s_u * sigma * L_F / (sigma + L_F))
    a = schedules.bda_theory(gamma, s_u, sigma, L_F, eps)
    for k in range(1, 30):
        assert a(k) == pytest.approx(min(2 * gamma / (k * (1 - beta)), 1 - eps), rel=1e-15)
    assert a(1) == 0.9 and a(100) < 0.05
    # the sqrt argument may be 0 (s_u = (sigma + L_F) / (2 sigma L_F)): beta = 0
    assert schedules.bda_theory(0.5, 1.0, 1.0, 1.0, 0.5)(4) == pytest.approx(0.25)


@pytest.mark.parametrize("args,match", [
    ((1.0, 1.5, 1.0, 1.0, 0.1), r"must be in \[0, 1\)"),   # 1 - 2 s_u sigma L_F/(sigma+L_F) < 0
    ((0.0, 0.5, 1.0, 1.0, 0.1), "gamma"),
    ((1.5, 0.5, 1.0, 1.0, 0.1), "gamma"),
    ((1.0, -0.5, 1.0, 1.0, 0.1), "must be > 0"),
    ((1.0, 0.5, 0.0, 1.0, 0.1), "must be > 0"),
    ((1.0, 0.5, 2.0, 1.0, 0.1), "L_F"),
    ((1.0, 0.5, 1.0, 1.0, 0.0), "eps"),
    ((1.0, 0.5, 1.0, 1.0, 1.0), "eps"),
    ((1.0, float("nan"), 1.0, 1.0, 0.1), "finite"),
    ((1.0, "a", 1.0, 1.0, 0.1), "real number"),
])
def test_bda_theory_validation(args, match):
    with pytest.raises(ValueError, match=match):
        schedules.bda_theory(*args)


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.geometric(0.5, 0.0), "q must be in"),
    (lambda: schedules.geometric(0.5, 1.5), "q must be in"),
    (lambda: schedules.power(-1.0), "p must be >= 0"),
    (lambda: schedules.inverse(float("inf")), "finite"),
    (lambda: schedules.constant(True), "real number"),
])
def test_schedule_parameter_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_schedules_take_the_one_based_step_number(k):
    with pytest.raises(ValueError, match="1-based"):
        schedules.inverse(0.5)(k)


def test_schedules_are_immutable():
    s = schedules.inverse(0.5)
    with pytest.raises(Exception):
        s.c = 2.0  # frozen dataclass


# ------------------------------------------------------------------ prox
def test_l1_is_soft_thresholding():
    v = torch.tensor([-2.0, -0.3, 0.0, 0.1, 0.5, 3.0], dtype=D)
    out = prox.l1(0.5)(v, 0.8)  # threshold 0.4
    assert torch.allclose(out, torch.tensor([-1.6, 0.0, 0.0, 0.0, 0.1, 2.6], dtype=D), rtol=0, atol=1e-15)
    assert prox.l1(0.0)(v, 1.0).equal(v)


def test_l1_on_dicts_and_per_key_weights():
    v = {"a": torch.tensor([1.0, -1.0], dtype=D), "b": torch.tensor([[0.2, -3.0]], dtype=D)}
    out = prox.l1({"a": 0.5, "b": 1.0})(v, 1.0)
    assert torch.allclose(out["a"], torch.tensor([0.5, -0.5], dtype=D))
    assert torch.allclose(out["b"], torch.tensor([[0.0, -2.0]], dtype=D))
    assert out["b"].shape == (1, 2)
    with pytest.raises(ValueError, match="dict"):
        prox.l1({"a": 0.5})(torch.ones(2), 1.0)


def test_l1_tensor_weight_and_gradient():
    lam = torch.tensor([0.1, 1.0], dtype=D)
    v = torch.tensor([0.5, 0.5], dtype=D, requires_grad=True)
    out = prox.l1(lam)(v, 1.0)
    assert torch.allclose(out.detach(), torch.tensor([0.4, 0.0], dtype=D))
    (g,) = torch.autograd.grad(out.sum(), v)
    assert torch.equal(g, torch.tensor([1.0, 0.0], dtype=D))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6), st.floats(0, 2), st.floats(0.01, 2))
def test_l1_prox_satisfies_its_optimality_condition(vals, lam, step):
    v = torch.tensor(vals, dtype=D)
    u = prox.l1(lam)(v, step)
    # 0 in u - v + step * lam * d|u|
    r = v - u
    thr = step * lam
    nz = u != 0
    assert torch.allclose(r[nz], thr * torch.sign(u[nz]), atol=1e-12)
    assert bool((r[~nz].abs() <= thr + 1e-12).all())


def test_box_equals_the_y_bounds_projection():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, generator=gen, dtype=D) * 2
    flat, spec = flatten(v)
    for lo, hi in [(-0.5, 0.7), (None, 0.1), (-0.2, None)]:
        assert torch.equal(prox.box(lo, hi)(v, 0.3).reshape(-1), as_box((lo, hi), spec, "y_bounds")(flat))
    assert prox.box()(v, 1.0).equal(v)


def test_box_dict_and_validation():
    v = {"a": torch.tensor([2.0, -2.0], dtype=D), "b": torch.tensor([0.5], dtype=D)}
    out = prox.box({"a": -1.0, "b": 0.0}, {"a": 1.0, "b": 0.2})(v, 1.0)
    assert out["a"].tolist() == [1.0, -1.0] and out["b"].tolist() == [0.2]
    with pytest.raises(ValueError, match="exceeds"):
        prox.box(1.0, 0.0)
    with pytest.raises(ValueError, match="nan"):
        prox.box(float("nan"), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        prox.l1(-0.1)
    with pytest.raises(ValueError, match="number"):
        prox.l1("big")
    with pytest.raises(ValueError, match="step"):
        prox.l1(0.1)(torch.ones(2), -1.0)


def test_schedule_from_config():
    from bilevel import schedules

    g = schedules.from_config({"schedule": "geometric", "c": 0.5, "q": 0.999})
    assert g(3) == pytest.approx(0.5 * 0.999 ** 3, rel=1e-15)
    p = schedules.from_config({"schedule": "power", "p": 0.25})
    assert p(16) == pytest.approx(0.5, rel=1e-15)
    assert schedules.from_config(0.3) == 0.3
    with pytest.raises(ValueError, match="one of"):
        schedules.from_config({"schedule": "cosine"})
    with pytest.raises(ValueError, match="bad arguments"):
        schedules.from_config({"schedule": "geometric", "c": 0.5})
