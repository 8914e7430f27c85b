"""bilevel._validate: the core's argument checks accept what they document and reject the rest by name."""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bilevel import _validate as V

NONFINITE = [math.nan, math.inf, -math.inf]
NOT_NUMBERS = ["1", None, [1.0], {"a": 1.0}, torch.ones(2), torch.tensor(1.0 + 0j), torch.tensor(True)]


# ------------------------------------------------------------------ check_int
@settings(max_examples=50, deadline=None)
@given(st.integers(-50, 50), st.integers(-10, 10), st.one_of(st.none(), st.integers(-10, 10)))
def test_int_accepts_exactly_the_closed_range(v, low, high):
    ok = v >= low and (high is None or v <= high)
    if ok:
        assert V.check_int("n", v, low, high) == v
    else:
        with pytest.raises(ValueError, match=r"^n must be (>= -?\d+|between -?\d+ and -?\d+), got -?\d+$"):
            V.check_int("n", v, low, high)


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, torch.tensor(3), math.nan])
def test_int_rejects_non_integers_and_bools(value):
    with pytest.raises(ValueError, match=r"^steps must be an integer, got "):
        V.check_int("steps", value, 0)


def test_int_bounds_are_inclusive_and_named():
    assert V.check_int("truncate", 0, 0, 5) == 0 and V.check_int("truncate", 5, 0, 5) == 5
    with pytest.raises(ValueError, match="truncate must be between 0 and 5, got 6"):
        V.check_int("truncate", 6, 0, 5)
    with pytest.raises(ValueError, match="truncate must be an integer, got 'abc'"):  # the CLI shows this text
        V.check_int("truncate", "abc", 0, 5)


def test_int_numpy_integers_become_ints():
    out = V.check_int("n", np.int64(4), 1)
    assert out == 4 and type(out) is int


def test_int_none_and_who():
    assert V.check_int("checkpoint", None, 1, allow_none=True) is None
    with pytest.raises(ValueError, match="checkpoint must be None or an integer, got 'a'"):
        V.check_int("checkpoint", "a", 1, allow_none=True)
    with pytest.raises(ValueError, match="checkpoint must be an integer, got None"):
        V.check_int("checkpoint", None, 1)
    with pytest.raises(ValueError, match="^ptt needs inner_steps >= 1, got 0$"):
        V.check_int("inner_steps", 0, 1, who="ptt")
    with pytest.raises(ValueError, match="^ptt needs inner_steps to be an integer, got 2.5$"):
        V.check_int("inner_steps", 2.5, 1, who="ptt")


# ------------------------------------------------------------------ check_float
@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_accepts_finite_reals_only(v):
    if math.isfinite(v):
        assert V.check_float("lr", v) == v
        if v > 0:
            assert V.check_float("lr", v, positive=True) == v
    else:
        with pytest.raises(ValueError, match="lr must be finite"):
            V.check_float("lr", v)


@pytest.mark.parametrize("value", [0, 0.0, -0.0, -1e-300])
def test_float_positive_excludes_zero(value):
    with pytest.raises(ValueError, match="lr must be > 0"):
        V.check_float("lr", value, positive=True)


def test_float_nonnegative_includes_zero():
    assert V.check_float("tol", 0, nonnegative=True) == 0.0
    with pytest.raises(ValueError, match="tol must be >= 0, got -1.0"):
        V.check_float("tol", -1, nonnegative=True)


@pytest.mark.parametrize("value", NOT_NUMBERS + [True, False])
def test_float_rejects_non_numbers_and_bools(value):
    with pytest.raises(ValueError, match="lr must be a real number > 0, got"):
        V.check_float("lr", value, positive=True)


def test_float_conversions_and_none():
    for value in (3, np.float32(0.5), torch.tensor(0.25, dtype=torch.float64), torch.tensor([2.0])):
        out = V.check_float("x", value)
        assert type(out) is float and out == float(value)
    assert V.check_float("cg_tol", None, nonnegative=True, allow_none=True) is None
    with pytest.raises(ValueError, match="cg_tol must be None or a real number >= 0, got 'x'"):
        V.check_float("cg_tol", "x", nonnegative=True, allow_none=True)


# ------------------------------------------------------------------ check_interval / check_fraction
@settings(max_examples=80, deadline=None)
@given(st.floats(-0.5, 1.5) | st.sampled_from([0.0, 1.0, math.nan, math.inf]), st.booleans(), st.booleans())
def test_interval_ends_are_open_or_closed_as_asked(v, open_low, open_high):
    inside = (v > 0 if open_low else v >= 0) and (v < 1 if open_high else v <= 1)
    interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
    if inside:
        assert V.check_interval("q", v, 0.0, 1.0, open_low=open_low, open_high=open_high) == v
    else:
        with pytest.raises(ValueError, match=f"^q must be in {re.escape(interval)}, got "):
            V.check_interval("q", v, 0.0, 1.0, open_low=open_low, open_high=open_high)


def test_interval_types_and_none():
    with pytest.raises(ValueError, match=r"momentum must be None or a real number in \[0, 1\), got True"):
        V.check_interval("momentum", True, 0.0, 1.0, open_high=True, allow_none=True)
    assert V.check_interval("momentum", None, 0.0, 1.0, allow_none=True) is None
    with pytest.raises(ValueError, match=r"eps must be a real number in \(0, 1\), got 'a'"):
        V.check_interval("eps", "a", 0.0, 1.0, open_low=True, open_high=True)


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_fraction_is_the_closed_unit_interval(v):
    if 0.0 <= v <= 1.0:
        assert V.check_fraction("alpha", v) == v
        assert V.check_fraction("alpha", torch.tensor(v, dtype=torch.float64)) == v
    else:
        with pytest.raises(ValueError, match=r"^alpha\(3\) = .* is outside \[0, 1\]$"):
            V.check_fraction("alpha(3)", v)


@pytest.mark.parametrize("value", NOT_NUMBERS + [True])
def test_fraction_rejects_non_numbers(value):
    with pytest.raises(ValueError, match=r"alpha must be a real number in \[0, 1\], got"):
        V.check_fraction("alpha", value)


# ------------------------------------------------------------------ bool, callable, step index, checkpoint
@pytest.mark.parametrize("value", [0, 1, "True", None, np.bool_(True), torch.tensor(True)])
def test_bool_is_only_true_or_false(value):
    with pytest.raises(ValueError, match="single_pass must be True or False, got"):
        V.check_bool("single_pass", value)
    assert V.check_bool("single_pass", True) is True and V.check_bool("single_pass", False) is False


def test_callable():
    f = lambda v, s: v  # noqa: E731
    assert V.check_callable("prox", f, "prox(v, step)") is f
    assert V.check_callable("prox", None, "prox(v, step)", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^prox must be a callable prox\(v, step\) or None, got int$"):
        V.check_callable("prox", 3, "prox(v, step)", allow_none=True)
    with pytest.raises(ValueError, match=r"^prox must be a callable prox\(v, step\), got NoneType$"):
        V.check_callable("prox", None, "prox(v, step)")


@pytest.mark.parametrize("first", [0, 1])
def test_step_index(first):
    assert V.check_step_index(first, first) == first and V.check_step_index(np.int32(7), first) == 7
    for bad in (first - 1, 1.0, True, "2", None):
        with pytest.raises(ValueError, match=f"the {first}-based inner step number k must be an integer >= {first}"):
            V.check_step_index(bad, first)


def test_checkpoint():
    assert V.check_checkpoint(None) is None and V.check_checkpoint(1) == 1
    with pytest.raises(ValueError, match="checkpoint must be >= 1, got 0"):
        V.check_checkpoint(0)
    with pytest.raises(ValueError, match="checkpoint must be None or an integer, got 2.0"):
        V.check_checkpoint(2.0)


# ------------------------------------------------------------------ check_real_param
def test_real_param_numbers_tensors_dicts():
    t = torch.tensor([0.0, 2.0])
    assert V.check_real_param("lam", 1, nonnegative=True) == 1.0
    assert V.check_real_param("lam", t, nonnegative=True) is t
    assert V.check_real_param("lam", {"a": 1, "b": t}) == {"a": 1.0, "b": t}
    with pytest.raises(ValueError, match=r"lam\['b'\] must be >= 0"):
        V.check_real_param("lam", {"a": 1.0, "b": torch.tensor([1.0, -1.0])}, nonnegative=True)
    with pytest.raises(ValueError, match="lam must be finite"):
        V.check_real_param("lam", torch.tensor([1.0, math.inf]))
    with pytest.raises(ValueError, match="lam must be a number, a tensor or a dict of them, got bool"):
        V.check_real_param("lam", True)
    with pytest.raises(ValueError, match="lam must be a number, a tensor or a dict of them, got None"):
        V.check_real_param("lam", None)


def test_real_param_bounds_may_be_infinite_but_not_nan():
    assert V.check_real_param("lo", -math.inf, finite=False, allow_none=True) == -math.inf
    assert V.check_real_param("lo", None, finite=False, allow_none=True) is None
    with pytest.raises(ValueError, match="lo must not be nan"):
        V.check_real_param("lo", math.nan, finite=False, allow_none=True)


# ------------------------------------------------------------------ the contract of the re-exports
def test_registry_reexports_the_checks():
    from bilevel.methods import check_checkpoint, check_float, check_int
    from bilevel.methods.registry import check_checkpoint as c2, check_float as f2, check_int as i2

    assert (check_int, check_float, check_checkpoint) == (V.check_int, V.check_float, V.check_checkpoint)
    assert (i2, f2, c2) == (V.check_int, V.check_float, V.check_checkpoint)
