"""Every user error of the core API gives a clear ValueError (never a silent NaN or a dropped option)."""
import math

import pytest
import torch

import bilevel
from bilevel.problems import make_quadratic


@pytest.fixture
def q():
    return make_quadratic(3, 4, 0)


def call(q, **kw):
    args = dict(method="rhg", inner_steps=5, inner_lr=q["lr"])
    args.update(kw)
    return bilevel.hypergrad(q["upper"], q["lower"], args.pop("x", q["x"]), args.pop("y0", q["y0"]), **args)


def test_unknown_method_names_the_valid_ones(q):
    with pytest.raises(ValueError, match="unknown method 'rgh'") as e:
        call(q, method="rgh")
    for name in ["rhg", "fhg", "trhg", "cg", "neumann"]:
        assert name in str(e.value)


@pytest.mark.parametrize("bad,kind", [(math.nan, "nan"), (math.inf, "inf")])
@pytest.mark.parametrize("where", ["x", "y0"])
def test_nonfinite_inputs(q, bad, kind, where):
    v = q[where].clone()
    v[1] = bad
    with pytest.raises(ValueError, match=f"{kind} in the input {where}"):
        call(q, **{where: v})
    with pytest.raises(FloatingPointError):
        call(q, **{where: v})


@pytest.mark.parametrize("method", ["rhg", "fhg", "trhg", "cg", "neumann"])
def test_divergent_inner_loop_names_the_step(q, method):
    # inner_lr far above 2/L: the iterate overflows to inf (then nan) after a few hundred steps
    with pytest.raises(ValueError, match=r"(nan|inf) at inner step \d+ of 2000") as e:
        call(q, method=method, inner_steps=2000, inner_lr=50 * q["lr"])
    step = int(str(e.value).split("inner step ")[1].split(" ")[0])
    assert 1 < step < 2000


def test_nan_produced_by_the_objective_at_a_known_step():
    """f(y) = sqrt(y)-like: the gradient becomes nan exactly when y crosses below 0 at step 3."""
    def lower(x, y):
        return -(torch.sqrt(y)).sum() + 0.0 * x.sum() + 2.0 * y.sum()

    upper = lambda x, y: (y ** 2).sum()
    # y_{k+1} = y_k - lr (2 - 1/(2 sqrt(y_k))): from y0 = 1 with lr = 0.4: 0.4, -0.084 (after step 2), nan at 3
    with pytest.raises(ValueError, match="nan at inner step 3 of 10"):
        bilevel.hypergrad(upper, lower, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                          method="rhg", inner_steps=10, inner_lr=0.4)


def test_nonfinite_upper_objective(q):
    with pytest.raises(ValueError, match="inf in the upper objective"):
        bilevel.hypergrad(lambda x, y: torch.tensor(math.inf, dtype=torch.float64) + y.sum(), q["lower"], q["x"],
                          q["y0"], method="rhg", inner_steps=2, inner_lr=q["lr"])


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_bad_inner_steps(q, steps):
    with pytest.raises(ValueError, match="inner_steps"):
        call(q, inner_steps=steps)


@pytest.mark.parametrize("lr", [-0.1, 0.0, math.nan, "fast"])
def test_bad_inner_lr(q, lr):
    with pytest.raises(ValueError, match="inner_lr"):
        call(q, inner_lr=lr)


@pytest.mark.parametrize("opts,name", [({"neumann_lr": -1.0}, "neumann_lr"), ({"neumann_terms": 0}, "neumann_terms")])
def test_bad_neumann_options(q, opts, name):
    with pytest.raises(ValueError, match=name):
        call(q, method="neumann", **opts)


def test_bad_outer_options(q):
    kw = dict(method="rhg", inner_steps=2, inner_lr=q["lr"], outer_steps=2)
    with pytest.raises(ValueError, match="outer_lr"):
        bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], outer_lr=-0.1, **kw)
    with pytest.raises(ValueError, match="outer_steps"):
        bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], outer_lr=0.1, **{**kw, "outer_steps": -1})
    with pytest.raises(ValueError, match="outer_optimizer"):
        bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], outer_lr=0.1, outer_optimizer="lbfgs", **kw)
    with pytest.raises(ValueError, match="outer_optimizer"):
        bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], outer_lr=0.1, outer_optimizer=dict, **kw)


@pytest.mark.parametrize("which", ["upper", "lower"])
def test_non_scalar_objectives(q, which):
    fns = {"upper": q["upper"], "lower": q["lower"]}
    fns[which] = lambda x, y: y * 2.0
    with pytest.raises(ValueError, match=f"the {which} objective must return a scalar tensor, got shape"):
        bilevel.hypergrad(fns["upper"], fns["lower"], q["x"], q["y0"], method="rhg", inner_steps=2, inner_lr=0.1)


def test_objective_returning_a_float(q):
    with pytest.raises(ValueError, match="scalar tensor, got float"):
        bilevel.hypergrad(lambda x, y: 1.0, q["lower"], q["x"], q["y0"], method="rhg", inner_steps=2, inner_lr=0.1)


def test_mismatched_dict_keys_in_bounds():
    x0 = {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    up = lambda x, y: ((y - x["a"].sum()) ** 2).sum() + x["b"].sum() ** 2
    lo = lambda x, y: ((y - x["b"]) ** 2).sum()
    kw = dict(method="rhg", outer_steps=1, outer_lr=0.1, inner_steps=2, inner_lr=0.1)
    with pytest.raises(ValueError, match="keys"):
        bilevel.solve(up, lo, x0, torch.zeros(1, dtype=torch.float64), x_bounds=({"a": 0.0, "c": 0.0}, None), **kw)
    with pytest.raises(ValueError, match="keys"):
        bilevel.solve(up, lo, x0, {"u": torch.zeros(1, dtype=torch.float64)}, y_bounds=({"v": 0.0}, 1.0), **kw)


def test_dict_with_mixed_dtypes_or_integer_tensors():
    up = lambda x, y: (y ** 2).sum()
    lo = lambda x, y: (y ** 2).sum()
    with pytest.raises(ValueError, match="share one dtype"):
        bilevel.hypergrad(up, lo, {"a": torch.zeros(1), "b": torch.zeros(1, dtype=torch.float64)}, torch.zeros(1),
                          method="rhg", inner_steps=1, inner_lr=0.1)
    with pytest.raises(ValueError, match="floating dtype"):
        bilevel.hypergrad(up, lo, torch.zeros(2, dtype=torch.int64), torch.zeros(1), method="rhg", inner_steps=1,
                          inner_lr=0.1)
    with pytest.raises(ValueError, match="empty dict"):
        bilevel.hypergrad(up, lo, {}, torch.zeros(1), method="rhg", inner_steps=1, inner_lr=0.1)


@pytest.mark.parametrize("method,opt", [("rhg", "truncate"), ("cg", "neumann_terms"), ("neumann", "cg_steps"),
                                        ("fhg", "lr"), ("trhg", "trunc")])
def test_unknown_options_are_rejected_by_name(q, method, opt):
    with pytest.raises(ValueError, match=f"unknown option.*'{opt}'.*for method '{method}'"):
        call(q, method=method, **{opt: 3})


def test_unknown_option_in_solve_is_rejected(q):
    with pytest.raises(ValueError, match="unknown option"):
        bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], method="cg", outer_steps=1, outer_lr=0.1,
                      inner_steps=2, inner_lr=0.1, cg_stepz=3)


def test_truncate_out_of_range(q):
    with pytest.raises(ValueError, match="truncate must be between 0 and 5"):
        call(q, method="trhg", truncate=6)


def test_bounds_errors(q):
    with pytest.raises(ValueError, match="lower bound exceeds upper bound"):
        call(q, y_bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="y_bounds must be None, a pair"):
        call(q, y_bounds=(0.0, 1.0, 2.0))
