"""``compile_step=True``: graph-free gradient steps through torch.compile give the same hypergradient."""
import importlib

import pytest
import torch

import bilevel
from bilevel.problems import make_quadratic

CASES = [("trhg", {"truncate": 5}), ("cg", {"cg_steps": 30}), ("neumann", {}), ("rhg", {"checkpoint": 4})]


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the compiled step (the real one, delegated to)."""
    gd_module = importlib.import_module("bilevel.dynamics.gd")
    calls = []
    real = gd_module.compiled_graph_free_step()

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(gd_module, "compiled_graph_free_step", lambda: counting)
    return calls


@pytest.mark.parametrize("method,opts", CASES)
def test_compiled_graph_free_steps_give_the_same_hypergradient(method, opts, spy):
    q = make_quadratic(3, 6, 41)
    kw = dict(method=method, inner_steps=60, inner_lr=q["lr"], y_bounds=(-3.0, 3.0), **opts)
    eager = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], **kw)
    assert not spy
    comp = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], compile_step=True, **kw)
    graph_free = {"trhg": 60 - 5, "cg": 60, "neumann": 60, "rhg": 60 - 4}[method]
    assert len(spy) == graph_free  # every graph-free step, and only those, went through the compiled function
    assert torch.allclose(comp.grad, eager.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(comp.y, eager.y, rtol=1e-10, atol=1e-12)


def test_compile_step_with_a_prox_and_dict_variables():
    torch.manual_seed(0)
    A, b = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def lower(x, y):
        return 0.5 * ((A @ y["w"] + y["c"] - b) ** 2).sum() + 0.5 * (x["lam"].exp() * y["w"] ** 2).sum()

    def upper(x, y):
        return ((A @ y["w"] + y["c"]) ** 2).mean()

    x = {"lam": torch.zeros(5, dtype=torch.float64)}
    y0 = {"w": torch.zeros(5, dtype=torch.float64), "c": torch.zeros((), dtype=torch.float64)}
    kw = dict(method="cg", inner_steps=40, inner_lr=0.02, cg_steps=20)
    eager = bilevel.hypergrad(upper, lower, x, y0, **kw)
    comp = bilevel.hypergrad(upper, lower, x, y0, compile_step=True, **kw)
    assert torch.allclose(comp.grad["lam"], eager.grad["lam"], rtol=1e-10, atol=1e-12)


def test_compile_step_validation():
    q = make_quadratic(2, 2, 42)
    args = (q["upper"], q["lower"], q["x"], q["y0"])
    with pytest.raises(ValueError, match="compile_step must be True or False"):
        bilevel.hypergrad(*args, method="cg", inner_steps=3, inner_lr=0.1, compile_step="yes")
    with pytest.raises(ValueError, match="set checkpoint=S"):
        bilevel.hypergrad(*args, method="rhg", inner_steps=3, inner_lr=0.1, compile_step=True)
    with pytest.raises(ValueError, match="unknown option.*compile_step"):
        bilevel.hypergrad(*args, method="fhg", inner_steps=3, inner_lr=0.1, compile_step=True)
