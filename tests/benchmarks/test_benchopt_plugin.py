"""The benchopt benchmark (benchmarks/benchopt/) without benchopt: its objective, datasets and solver are imported
with a stand-in ``benchopt`` module (only the names those files use) and driven as ``benchopt run`` drives them,
on a tiny quadratic: dataset -> set_data -> get_objective -> set_objective -> run(callback) -> get_result ->
evaluate_result.
"""
import contextlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "benchopt"
METHODS = ("stocbio", "amigo", "soba", "saba", "srba", "ttsa", "fsla", "mrbo", "vrbo", "bsa", "sustain", "pzobo",
           "f2sa", "bome")


class _Parametrized:
    """benchopt's ParametrizedNameMixin, reduced: the first value of each parameter, overridden by keywords."""

    parameters = {}

    def __init__(self, **parameters):
        values = {k: v[0] for k, v in self.parameters.items()}
        values.update(parameters)
        for k, v in values.items():
            setattr(self, k, v)


def _stand_in() -> dict:
    bo = types.ModuleType("benchopt")
    bo.BaseObjective = type("BaseObjective", (_Parametrized,), {})
    bo.BaseDataset = type("BaseDataset", (_Parametrized,), {})
    bo.BaseSolver = type("BaseSolver", (_Parametrized,), {})
    bo.safe_import_context = contextlib.nullcontext
    sc = types.ModuleType("benchopt.stopping_criterion")

    class SufficientProgressCriterion:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    sc.SufficientProgressCriterion = SufficientProgressCriterion
    bo.stopping_criterion = sc
    return {"benchopt": bo, "benchopt.stopping_criterion": sc}


def _load(relpath: str):
    spec = importlib.util.spec_from_file_location(f"_benchopt_plugin_{Path(relpath).stem}", BENCH / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def plugin(request):
    mp = pytest.MonkeyPatch()
    for name, mod in _stand_in().items():
        mp.setitem(sys.modules, name, mod)
    request.addfinalizer(mp.undo)
    return types.SimpleNamespace(objective=_load("objective.py"), quadratic=_load("datasets/quadratic.py"),
                                 datacleaning=_load("datasets/datacleaning.py"), logreg=_load("datasets/logreg.py"),
                                 solver=_load("solvers/bilevel_stochastic.py"))


class _Callback:
    """``benchopt``'s callback, reduced: True for the first ``n`` calls, recording the metrics at each call."""

    def __init__(self, objective, solver, n):
        self.objective, self.solver, self.n, self.calls, self.values = objective, solver, n, 0, []

    def __call__(self):
        self.values.append(self.objective.evaluate_result(**self.solver.get_result())["value"])
        self.calls += 1
        return self.calls <= self.n


def _objective(plugin):
    data = plugin.quadratic.Dataset(n_samples=64, dim=5).get_data()
    assert data == {"problem": "quadratic", "seed": 0,
                    "options": {"n_inner": 64, "n_outer": 64, "dim_inner": 5, "dim_outer": 5}}
    obj = plugin.objective.Objective()
    obj.set_data(**data)
    return obj


def test_declared_parameters_match_the_library(plugin):
    from bilevel.stochastic import METHODS as LIB

    assert tuple(plugin.solver.Solver.parameters["method"]) == METHODS
    assert set(METHODS) == set(LIB)
    assert plugin.solver.Solver.sampling_strategy == "callback"
    assert plugin.datacleaning.Dataset.parameters["ratio"] == [0.5, 0.7, 0.9]
    assert plugin.datacleaning.Dataset(ratio=0.7).get_data()["problem"] == "datacleaning0.7"
    assert plugin.logreg.Dataset().get_data()["problem"] == "logreg"


@pytest.mark.parametrize("method", ["soba", "saba"])
def test_run_three_callbacks_decreases_the_metric(plugin, method):
    obj = _objective(plugin)
    od = obj.get_objective()
    assert set(od) >= {"upper", "lower", "n_upper", "n_lower", "x0", "y0", "params"}
    assert obj.evaluate_result(**obj.get_one_result())["value"] > 0

    solver = plugin.solver.Solver(method=method, eval_freq=8)
    solver.set_objective(**od)
    assert (solver.inner_lr, solver.outer_lr) == (od["params"][method]["inner_lr"], od["params"][method]["outer_lr"])
    cb = _Callback(obj, solver, 3)
    solver.run(cb)
    assert solver._loop.t == 3 * 8                       # exactly 3 x eval_freq outer iterations
    assert len(cb.values) == 4                           # the start, then after each block
    final = obj.evaluate_result(**solver.get_result())
    assert final["value"] == cb.values[-1] < cb.values[0]
    assert set(final) >= {"value", "grad_norm2", "rel_error", "inner_distance", "h"}
    assert final["value"] == final["grad_norm2"]


def test_overrides_seed_and_divergence(plugin):
    obj = _objective(plugin)
    od = obj.get_objective()
    tuned = od["params"]["soba"]
    s = plugin.solver.Solver(method="soba", step_size=0.05, random_state=3)
    s.set_objective(**od)
    ratio = tuned["inner_lr"] / tuned["outer_lr"]
    assert s.inner_lr == 0.05 and math.isclose(s.outer_lr, 0.05 / ratio) and s.seed == 3
    s = plugin.solver.Solver(method="soba", outer_ratio=0.5)
    s.set_objective(**od)
    assert s.inner_lr == tuned["inner_lr"] and math.isclose(s.outer_lr, tuned["inner_lr"] / 0.5) and s.seed == 0
    # the problem is built once per (name, seed, options)
    assert obj.problem is _objective(plugin).problem
    # non-finite iterates: value nan (benchopt's status 'diverged')
    x = od["x0"].clone()
    x[0] = float("nan")
    assert math.isnan(obj.evaluate_result(x=x, y=od["y0"])["value"])
    assert math.isnan(obj.evaluate_result(x=od["x0"], y=torch.full_like(od["y0"], float("inf")))["value"])
