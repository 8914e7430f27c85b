"""The stochastic benchmark's problems (benchmarks/stochastic/problems.py) on tiny instances, and its runner and plots.

* quadratic: the closed forms (y*, grad h, x*) agree with the finite sums (inner solution from the lower objective's
  Hessian, finite differences of h = F(x, y*(x))); batches are means;
* datacleaning / logreg on generated arrays (no Fashion-MNIST): the objectives are means over idx and equal the
  formulas; logreg's implicit hypergradient matches finite differences of its value function;
* run_one / plot: a short run is recorded, a diverging one is marked, the figure and RESULTS.md are written;
* tune: every grid point runs with its steps, the lowest final selection metric wins, a diverged point loses, the
  runner takes the chosen parameters, a test-set metric is refused.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from bilevel_benchmarks.stochastic import plot, problems, run, tune


pytestmark = pytest.mark.usefixtures("one_thread")


def _idx(n, k, seed=0):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def _is_mean(fn, x, y, n, tol=1e-12):
    """fn(idx) is the mean of the per-sample values, and fn(None) the mean over all samples."""
    idx = _idx(n, 7)
    per = torch.stack([fn(x, y, idx[i:i + 1]) for i in range(len(idx))])
    assert torch.allclose(fn(x, y, idx), per.mean(), rtol=tol, atol=tol)
    assert torch.allclose(fn(x, y, None), fn(x, y, torch.arange(n)), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------------ quadratic
@pytest.fixture(scope="module")
def quad():
    return problems.make("quadratic", n_inner=64, n_outer=48, dim_inner=5, dim_outer=3, dtype=torch.float64)


def _y_star_from_lower(p, x):
    y0 = torch.zeros_like(p.y0)
    H = torch.autograd.functional.hessian(lambda y: p.lower(x, y, None), y0)
    g = torch.autograd.grad(p.lower(x, y0.requires_grad_(), None), y0)[0]
    return -torch.linalg.solve(H, g)


def test_quadratic_closed_forms_match_the_finite_sums(quad):
    cf = quad.extras["closed_form"]
    x = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_y_star_from_lower(quad, x), cf.y_star(x), atol=1e-10)

    def h(z):
        return quad.upper(z, _y_star_from_lower(quad, z), None)

    eps = 1e-5
    fd = torch.stack([(h(x + eps * e) - h(x - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=torch.float64)])
    assert torch.allclose(fd, cf.grad(x), rtol=1e-6, atol=1e-8)
    assert float(h(x)) == pytest.approx(float(cf.h(x)), rel=1e-10)
    assert float(cf.grad(cf.x_star).norm()) < 1e-9 * (1 + float(cf.grad(x).norm()))
    m = quad.metrics(x, torch.zeros(5, dtype=torch.float64))
    assert m["grad_norm2"] == pytest.approx(float(cf.grad(x).square().sum()), rel=1e-12)
    assert m["rel_error"] == pytest.approx(float((x - cf.x_star).norm() / cf.x_star.norm()), rel=1e-12)


def test_quadratic_objectives_are_means_and_start_as_the_benchmark(quad):
    x, y = torch.randn(3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    _is_mean(quad.lower, x, y, 64)
    _is_mean(quad.upper, x, y, 48)
    assert quad.n_lower == 64 and quad.n_upper == 48
    assert torch.equal(quad.x0, torch.full((3,), -2.0, dtype=torch.float64)) and not quad.y0.any()
    assert quad.info["lambda_min_hess_h"] > 0 and quad.info["lambda_min_benchmark"] >= 1e-12
    # a sample's Hessian in y is rank one (the benchmark's A_i = u_i u_i')
    H1 = torch.autograd.functional.hessian(lambda v: quad.lower(x, v, torch.tensor([3])), y)
    assert torch.linalg.matrix_rank(H1) == 1
    assert quad.target == pytest.approx(1e-3 * quad.metrics(quad.x0, quad.y0)["grad_norm2"])


def test_params_translate_the_benchmark_steps():
    p = problems.make("quadratic", n_inner=32, n_outer=32, dim_inner=4, dim_outer=2).params
    assert set(p) == set(problems.METHODS)
    assert p["amigo"] == {"inner_lr": 0.01, "outer_lr": pytest.approx(0.1)}  # step .01, outer_ratio .1
    assert p["f2sa"]["lam_growth"] == 0.01 and p["soba"] == {"inner_lr": 0.1, "outer_lr": 0.1}
    dc, _ = problems.params_for("datacleaning")
    assert dc["soba"]["outer_lr"] == pytest.approx(1e4) and dc["bome"] == {"inner_lr": 0.1, "outer_lr": 0.1}
    lr, _ = problems.params_for("logreg")
    assert lr["f2sa"] == {"inner_lr": 0.01, "outer_lr": 0.01} and lr["pzobo"]["n_gaussian_vectors"] == 1


# ------------------------------------------------------------------------------------------------------ data sets
def _arrays(n_train, n_test, shape=(4, 3), classes=10, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randint(0, 256, size=(n_train,) + shape).astype(np.uint8), rng.randint(0, classes, n_train),
            rng.randint(0, 256, size=(n_test,) + shape).astype(np.uint8), rng.randint(0, classes, n_test))


def test_datacleaning_objectives_are_the_weighted_means():
    p = problems.make("datacleaning0.5", arrays=_arrays(120, 25), n_train=70, n_val=30, dtype=torch.float64)
    (A, lab), (Av, labv) = p.extras["train"], p.extras["val"]
    assert A.shape == (70, 12) and Av.shape == (30, 12) and p.n_lower == 70 and p.n_upper == 30
    assert torch.allclose(A.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-12)  # standardized on train
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(70, dtype=torch.float64, generator=g), torch.randn(120, dtype=torch.float64, generator=g)
    _is_mean(p.lower, x, y, 70)
    _is_mean(p.upper, x, y, 30)
    idx = _idx(70, 9)
    W = y.view(12, 10)
    ce = torch.logsumexp(A[idx] @ W, 1) - (A[idx] @ W)[torch.arange(9), lab[idx]]
    manual = (torch.sigmoid(x[idx]) * ce).mean() + 0.2 * (y ** 2).sum()  # no 1/2 on the ridge term
    assert torch.allclose(p.lower(x, y, idx), manual, atol=1e-12)
    assert torch.allclose(p.upper(x, y, None), tF.cross_entropy(Av @ W, labv), atol=1e-12)
    # about half of the labels are redrawn; x0 = -2, y0 = 0
    assert 0.3 < float(p.extras["corrupted"].double().mean()) < 0.7
    assert torch.equal(p.x0, torch.full((70,), -2.0, dtype=torch.float64)) and not p.y0.any()
    m = p.metrics(x, y)
    assert set(m) == {"test_error", "val_error", "train_error"} and all(0 <= v <= 1 for v in m.values())
    assert m["val_error"] == pytest.approx(float(((Av @ W).argmax(1) != labv).double().mean()))


@pytest.fixture(scope="module")
def tiny_logreg():
    arrays = _arrays(160, 40, shape=(2, 3), classes=3, seed=1)
    return problems.make("logreg", arrays=arrays, classes=(0, 2), n_inner=40, dtype=torch.float64)


def test_logreg_objectives_are_the_regularized_logistic_means(tiny_logreg):
    p = tiny_logreg
    (A, s), (Av, sv) = p.extras["train"], p.extras["val"]
    assert A.shape == (40, 6) and p.n_lower == 40 and p.n_upper == len(sv) and set(s.tolist()) <= {-1.0, 1.0}
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, dtype=torch.float64, generator=g), torch.randn(6, dtype=torch.float64, generator=g)
    _is_mean(p.lower, x, y, 40)
    _is_mean(p.upper, x, y, p.n_upper)
    idx = _idx(40, 11)
    manual = torch.log1p(torch.exp(-s[idx] * (A[idx] @ y))).mean() + 0.5 * (torch.exp(x) * y ** 2).sum()
    assert torch.allclose(p.lower(x, y, idx), manual, atol=1e-12)
    assert torch.allclose(p.upper(x, y, None), torch.log1p(torch.exp(-sv * (Av @ y))).mean(), atol=1e-12)
    assert bool((p.x0 < 0).all())  # log U(0, 1)


def test_logreg_hypergradient_matches_finite_differences(tiny_logreg):
    p = tiny_logreg
    inner = p.extras["inner"]
    x = torch.linspace(-2.0, 0.5, 6, dtype=torch.float64)
    val, grad, theta, gn = inner.hypergradient(x)
    assert gn <= 1e-9
    assert float(inner.value_grad(theta, torch.exp(x))[1].norm()) <= 1e-9
    eps = 1e-4
    fd = torch.stack([(inner.hypergradient(x + eps * e)[0] - inner.hypergradient(x - eps * e)[0]) / (2 * eps)
                      for e in torch.eye(6, dtype=torch.float64)])
    assert torch.allclose(fd, grad, rtol=1e-5, atol=1e-9)
    m = p.metrics(x, theta)
    assert m["value_func"] == pytest.approx(float(val)) and m["inner_distance"] < 1e-12
    assert m["grad_norm2"] == pytest.approx(float(grad @ grad), rel=1e-6)


# ------------------------------------------------------------------------------------------------------ run and plot
def test_run_records_diverges_and_plots(tmp_path, quad):
    ok = run.run_one(quad, "soba", 0, budget=0.05, log_points=5)
    assert ok["status"] == "ok" and ok["steps"] > 0 and ok["elapsed"] >= 0.05
    hist = ok["history"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == ok["steps"] and len(hist) <= 7
    assert {"grad_norm2", "rel_error", "time", "inner_oracles", "outer_oracles"} <= set(hist[-1])
    bad = problems.BenchProblem(**{**quad.__dict__, "params": {"soba": {"inner_lr": 1e3, "outer_lr": 1e3}}})
    div = run.run_one(bad, "soba", 0, budget=5.0, log_points=5)
    assert div["status"] == "diverged" and div["elapsed"] < 5.0
    for res in (ok, div):
        run._write(tmp_path / "quadratic" / f"soba-seed{res['seed'] + (res is div)}.json", res)
    json.loads((tmp_path / "quadratic" / "soba-seed0.json").read_text())
    assert plot.main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "quadratic.png").stat().st_size > 0
    assert "| soba |" in text and "1/2" in text and str(tmp_path) not in text


def test_seed_and_method_parsing():
    assert run.parse_seeds("0-2,5") == [0, 1, 2, 5]
    assert run.parse_methods("all") == list(problems.METHODS)
    with pytest.raises(ValueError):
        run.parse_methods("soba,nope")
    assert math.isinf(plot.to_target({"history": [{"time": 0.0, "inner_oracles": 0, "outer_oracles": 0,
                                                   "m": 2.0}]}, "m", 1.0)[0])


def test_tune_picks_the_lowest_final_metric_and_run_uses_it(tmp_path, quad):
    out = tmp_path / "tuning"
    tuned = tune.tune(quad, ["soba"], [0.5, 1e4], [1.0, 0.5], seeds=[7], budget=0.1, out=str(out), log_points=3,
                      quiet=True)["soba"]
    points = {(p["step"], p["ratio"]): p for p in tuned["points"]}
    assert set(points) == {(0.5, 1.0), (0.5, 0.5), (1e4, 1.0), (1e4, 0.5)}
    for (step, ratio), p in points.items():  # each point ran with its own steps (its file says so)
        res = json.loads((out / "quadratic" / "soba" / f"{tune.point_name(step, ratio, 7)}.json").read_text())
        assert res["params"]["inner_lr"] == step and res["params"]["outer_lr"] == pytest.approx(step / ratio)
        assert res["seed"] == 7 and p["score"] == (tune.score(res, "grad_norm2") if res["status"] == "ok" else None)
    assert points[(1e4, 1.0)]["status"] == "diverged" and points[(1e4, 1.0)]["score"] is None
    best = min((p for p in points.values() if p["score"] is not None), key=lambda p: p["score"])
    assert tuned["chosen"] and tuned["score"] == best["score"]
    assert tuned["params"]["inner_lr"] == best["step"]
    loaded = tune.load_tuned(str(out / "quadratic" / "tuned.json"))
    assert loaded["soba"]["params"] == tuned["params"] and "seed 7," in loaded["soba"]["source"]
    with pytest.raises(ValueError, match="was run with seed 7 and budget 0.1 s, not seed 7 and 0.2 s"):
        tune.tune(quad, ["soba"], [0.5], [1.0], seeds=[7], budget=0.2, out=str(out), log_points=3, quiet=True)
    run.run("quadratic", ["soba"], [0], 0.02, str(tmp_path / "res"), 3, quiet=True, tuned=loaded, problem=quad)
    res = json.loads((tmp_path / "res" / "quadratic" / "soba-seed0.json").read_text())
    assert res["params"] == tuned["params"] and res["params_source"].startswith("tuned here")


def test_tune_scores_a_point_by_its_worst_seed(tmp_path, quad, monkeypatch):
    """With two tuning seeds a point's score is the worse of its two runs' (a point that diverges on one seed loses);
    the kept runs of the first seed are reused, so adding a seed runs only that seed."""
    out = tmp_path / "tuning"
    tune.tune(quad, ["soba"], [0.5, 0.125], [1.0], seeds=[7], budget=0.1, out=str(out), log_points=3, quiet=True)
    calls = []
    real = tune.run_one

    def fake_run_one(problem, method, seed, budget, log_points, params, source):
        calls.append(seed)
        res = real(problem, method, seed, budget, log_points, params=params, source=source)
        if params["inner_lr"] == 0.5:  # seed 8 diverges at the larger step
            res["status"] = "diverged"
        return res

    monkeypatch.setattr(tune, "run_one", fake_run_one)
    tuned = tune.tune(quad, ["soba"], [0.5, 0.125], [1.0], seeds=[7, 8], budget=0.1, out=str(out), log_points=3,
                      quiet=True)["soba"]
    assert calls == [8, 8]
    pts = {p["step"]: p for p in tuned["points"]}
    assert pts[0.5]["score"] is None and pts[0.5]["status"] == "diverged" and pts[0.5]["scores"][1] is None
    runs = [json.loads((out / "quadratic" / "soba" / f"{tune.point_name(0.125, 1.0, k)}.json").read_text())
            for k in (7, 8)]
    assert pts[0.125]["score"] == max(tune.score(r, "grad_norm2") for r in runs)
    assert tuned["params"]["inner_lr"] == 0.125 and tuned["meta"]["seeds"] == [7, 8]
    assert "seeds 7, 8, 0.1 s, final grad_norm2, worst over the seeds" in \
        tune.load_tuned(str(out / "quadratic" / "tuned.json"))["soba"]["source"]
    with pytest.raises(ValueError, match="distinct non-negative"):
        tune.tune(quad, ["soba"], [0.5], [1.0], seeds=[7, 7], budget=0.1, out=str(out), quiet=True)


def test_tune_refuses_test_metrics_and_bad_grids(quad):
    with pytest.raises(ValueError, match="never on the test set"):
        tune.selection_metric(quad, "test_error")
    assert tune.selection_metric(quad, None) == "grad_norm2"
    with pytest.raises(ValueError, match="positive finite"):
        tune.parse_floats("0.1,-1", "--steps")
    assert tune.score({"status": "diverged", "history": [{"m": 1.0}]}, "m") == math.inf
