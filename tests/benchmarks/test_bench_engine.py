"""`bilevel bench --only engine` (engine="compiled" against the autograd engine and the hand-written reference) and
the floor of hyperclean-linear (the matmuls of the inner steps, measured in the same run)."""
import inspect

import pytest
import torch

from bilevel_benchmarks import bench


def _silent(msg):
    pass


# ------------------------------------------------------------------------------------------ pure functions
def test_floor_pairs_per_method():
    K = 100
    assert bench.floor_pairs("inner_loop", K, {}) == K
    assert bench.floor_pairs("rhg", K, {}) == 2 * K  # forward and reverse steps each need both matmuls
    assert bench.floor_pairs("rhg+engine=compiled", K, {"engine": "compiled"}) == 2 * K  # how, not what
    assert bench.floor_pairs("rhg+checkpoint=10", K, {"checkpoint": 10}) == 2 * K
    assert bench.floor_pairs("trhg", K, {"truncate": 50}) == K + 50
    assert bench.floor_pairs("cg", K, {"cg_steps": 10, "cg_tol": 0.0}) == K + 10 + 1
    assert bench.floor_pairs("neumann", K, {"neumann_terms": 20}) == K + 20 + 1
    for m in ("fhg", "bda", "iaptt", "iaptt+single_pass"):
        assert bench.floor_pairs(m, K, {}) is None


def test_floor_pairs_follow_the_benchmark_options():
    prob = bench.make_toy()  # lib_options needs a problem only for bda's upper step size
    for method, pairs in (("trhg", 16 + 8), ("cg", 16 + 11), ("neumann", 16 + 21), ("rhg", 32)):
        assert bench.floor_pairs(method, 16, bench.lib_options(method, 16, prob)) == pairs


def test_amortize_after():
    # first call 10 s, then 1 ms against 6 ms: 10 - 0.001 = n (0.005) -> n = 1999.8 -> 2000
    assert bench.amortize_after(10.0, 0.001, 0.006) == 2000
    assert bench.amortize_after(0.002, 0.001, 0.006) == 1  # no compile worth the name: paid off at once
    assert bench.amortize_after(10.0, 0.006, 0.006) is None  # not faster: never
    assert bench.amortize_after(10.0, 0.007, 0.006) is None


def test_engine_group_is_selectable_and_left_out_of_quick_runs():
    assert "engine" in bench.GROUPS and bench.select_groups(["engine"]) == ("engine",)
    assert "engine" in bench.DEFAULT_SKIP["quick"] and "engine" in bench.DEFAULT_SKIP["smoke"]
    assert not bench.DEFAULT_SKIP["full"]
    for mode in ("full", "quick", "smoke"):
        cfg = bench.CONFIGS[mode]["engine"]
        assert {"bda", "rhg"} <= set(cfg["toy_methods"]) and "rhg" in cfg["methods"]
    assert bench.CONFIGS["full"]["engine"]["toy_K"] == 16 and bench.CONFIGS["full"]["engine"]["K"] == 100


# ------------------------------------------------------------------------------------------ floor
@pytest.fixture(scope="module")
def linear_prob():
    return bench.make_hyperclean("linear", 200, 100, "digits")


def test_hyperclean_features_are_the_tasks_training_features(linear_prob):
    X = bench.hyperclean_features(linear_prob)
    X_task = inspect.getclosurevars(linear_prob.lower).nonlocals["X_tr"]  # what the task's lower objective uses
    assert X.dtype == X_task.dtype and torch.equal(X, X_task)


def test_floor_layouts_compute_the_same_products():
    gen = torch.Generator().manual_seed(0)
    X, W, G = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((50, 7), (3, 7), (50, 3)))
    fns = bench.floor_fns(X, W, torch.zeros(3, dtype=torch.float64), G)
    for kind, want in (("logits:", X @ W.t()), ("wgrad:", (G.t() @ X).t())):
        got = {k: f() for k, f in fns.items() if k.startswith(kind)}
        assert len(got) >= 3
        for k, v in got.items():  # each layout, up to the transpose of its result
            torch.testing.assert_close(v if v.shape == want.shape else v.t(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:cg did not converge")
def test_floor_is_positive_and_time_vs_floor_is_median_over_floor(linear_prob):
    R = bench.load_references()
    floor = bench.measure_floor(linear_prob, warmup=1, reps=3)
    assert floor["floor_pair_seconds"] > 0 and floor["lower_grad_seconds"] > 0
    mm = floor["floor_matmul_seconds"]
    assert set(mm) == {"logits:addmm(b, X, W.t())", "logits:X @ W.t()", "logits:addmm(b[:, None], W, X.t()).t()",
                       "logits:(W @ X.t()).t()", "wgrad:G.t() @ X", "wgrad:X.t() @ G",
                       "wgrad:Xt @ G"} and all(v > 0 for v in mm.values())
    best = min(v for k, v in mm.items() if k.startswith("logits:")) + min(v for k, v in mm.items()
                                                                          if k.startswith("wgrad:"))
    assert floor["floor_pair_seconds"] == pytest.approx(best)
    assert sum(mm[k] for k in floor["floor_unit_keys"]) == pytest.approx(best)

    K = 4
    records = bench.with_floor(bench.bench_group(R, linear_prob, K, ("rhg", "cg", "bda"), 0, 2, _silent,
                                                 memory=None), floor, linear_prob)
    by = {r["method"]: r for r in records}
    for m, pairs in (("inner_loop", K), ("rhg", 2 * K), ("cg", K + 11)):
        r = by[m]
        assert r["floor_pairs"] == pairs
        assert r["floor_seconds"] == pytest.approx(pairs * floor["floor_pair_seconds"]) and r["floor_seconds"] > 0
        assert r["time_vs_floor"] == pytest.approx(r["seconds_per_iter"] / r["floor_seconds"])
        assert r["seconds_per_iter"] == pytest.approx(bench._median(r["times"]))
        assert "floor:" in r["note"]
    assert by["bda"]["floor_seconds"] is None and by["bda"]["time_vs_floor"] is None

    checks = [c for c in bench.check_targets(records) if "the floor" in c["target"]]
    assert [c["target"].split(":")[1].split()[0] for c in checks] == ["RHG", "CG"]
    assert checks[0]["measured"] == by["rhg"]["time_vs_floor"] and checks[0]["met"] is not None


def test_time_vs_floor_pairs_rounds_when_the_unit_was_timed_with_the_method():
    """With ``floor_unit_times`` the ratio is the median of per-round ratios, not the ratio of the medians."""
    toy = bench.make_toy()
    rec = {"problem": "toy", "method": "inner_loop", "inner_steps": 2, "times": [2.0, 8.0, 40.0],
           "seconds_per_iter": 8.0, "floor_unit_times": [1.0, 4.0, 2.0], "note": ""}
    floor = {"floor_pair_seconds": 0.5, "floor_layouts": bench.GRAD_FLOOR_LAYOUT, "lower_grad_seconds": 0.5}
    (r,) = bench.with_floor([rec], floor, toy, bench.GRAD_FLOOR_NOTE)
    assert r["floor_pairs"] == 2 and r["floor_pair_seconds"] == 2.0 and r["floor_pair_seconds_alone"] == 0.5
    assert r["floor_seconds"] == 4.0
    assert r["time_vs_floor"] == 1.0  # rounds: 2/2, 8/8, 40/4 -> median 1 (medians: 8 / 4 = 2)


def test_floor_unit_fns_are_the_chosen_layouts(linear_prob):
    logits = "logits:addmm(b[:, None], W, X.t()).t()"  # a layout whose name has a comma
    fns = bench.floor_unit_fns(linear_prob, {"floor_unit_keys": [logits, "wgrad:G.t() @ X"]})
    cands = bench._floor_candidates(linear_prob)
    assert set(fns) == {"logits", "wgrad"} and all(isinstance(f, bench.WarmTimed) for f in fns.values())
    assert torch.equal(fns["logits"].fn(), cands[logits]())
    assert torch.equal(fns["wgrad"].fn(), cands["wgrad:G.t() @ X"]())
    toy = bench.make_toy()
    (g,) = bench.floor_unit_fns(toy, {"floor_layouts": bench.GRAD_FLOOR_LAYOUT}).values()
    assert torch.equal(g.fn()[0], bench.lower_grad_call(toy)()[0])


def test_warm_timed_runs_once_untimed_then_times_its_repeats_once_a_round():
    calls = []
    w = bench.WarmTimed(lambda: calls.append(1), repeats=3)
    times = bench.time_round_robin({"floor:w": w, "other": lambda: None}, warmup=2, reps=4, min_sample=1.0)
    assert len(calls) == 6 * 4 and len(w.samples) == 6 and len(times["floor:w"]) == 4  # never batched by the rounds
    records = [{"times": [1.0] * 4}]
    bench._attach_floor_unit(records, times, {"w": w})
    assert records[0]["floor_unit_times"] == w.samples[-4:]  # the timed rounds' own samples


def test_the_toy_floor_counts_lower_gradients():
    """Problems without a matmul floor (the toy, the MLP follower): the unit is one lower gradient timed alone."""
    R = bench.load_references()
    toy = bench.make_toy()
    floor = bench.measure_gradient_floor(toy, warmup=0, reps=3)
    assert floor["floor_pair_seconds"] == floor["lower_grad_seconds"] > 0
    K = 4
    records = bench.with_floor(bench.bench_group(R, toy, K, ("rhg", "bda"), 0, 2, _silent), floor, toy,
                               bench.GRAD_FLOOR_NOTE)
    by = {r["method"]: r for r in records}
    assert by["rhg"]["floor_pairs"] == 2 * K and by["bda"]["floor_seconds"] is None
    unit = floor["floor_pair_seconds"]
    assert by["rhg"]["time_vs_floor"] == pytest.approx(by["rhg"]["seconds_per_iter"] / (2 * K * unit))
    assert "one forward + gradient of the lower objective" in by["rhg"]["note"]


# ------------------------------------------------------------------------------------------ engine group
@pytest.fixture(scope="module")
def engine_records():
    cfg = bench.CONFIGS["smoke"]["engine"]  # the toy and hyperclean (digits, 100 samples) at K = 4
    assert cfg["toy_K"] <= 4 and cfg["K"] <= 4
    return bench.bench_engine(bench.load_references(), cfg, "digits", 0, _silent)


def test_engine_group_records(engine_records):
    by = {(r["problem"], r["method"]): r for r in engine_records}
    assert set(by) == {("toy", m) for m in ("inner_loop", "bda", "bda+engine=compiled", "rhg", "rhg+engine=compiled")} \
        | {("hyperclean-linear", m) for m in ("inner_loop", "rhg", "rhg+engine=compiled")}
    for r in engine_records:
        assert r["engine_group"] is True
        for key in bench.REQUIRED_KEYS:
            assert key in r
        assert r["seconds_per_iter"] > 0
    for (problem, m), r in by.items():
        if m == "inner_loop":
            continue
        assert r["first_call_seconds"] > 0 and r["ratio_to_reference"] > 0
        if m.endswith("+engine=compiled"):
            eager = by[(problem, m.split("+")[0])]
            assert r["engine"] == "compiled" and eager["engine"] == "autograd"
            assert r["time_vs_autograd"] > 0 and r["speedup_vs_reference"] > 0
            assert "amortize_after" in r
            assert r["amortize_after"] == bench.amortize_after(r["first_call_seconds"], r["seconds_per_iter"],
                                                               eager["seconds_per_iter"])
    for m in ("inner_loop", "rhg", "rhg+engine=compiled"):  # the floor beside the ratios, timed in the rounds
        r = by[("hyperclean-linear", m)]
        assert r["floor_seconds"] > 0 and len(r["floor_unit_times"]) == len(r["times"])
        assert r["floor_pair_seconds"] == pytest.approx(bench._median(r["floor_unit_times"]))
        assert r["time_vs_floor"] == pytest.approx(
            bench.paired_ratio(r["times"], [r["floor_pairs"] * u for u in r["floor_unit_times"]]))


def test_engine_records_stay_out_of_the_other_targets(engine_records, tmp_path):
    checks = bench.check_targets(engine_records)
    targets = [c["target"] for c in checks]
    assert not any("of its reference" in t or "the plain inner loop" in t or "the floor" in t for t in targets)
    (toy,) = [c for c in checks if c["target"].startswith("Toy BDA Eq. 5")]
    rec = next(r for r in engine_records if r["problem"] == "toy" and r["method"] == "bda+engine=compiled")
    assert toy["measured"] == rec["speedup_vs_reference"] and toy["limit"] == bench.TARGET_ENGINE_TOY
    assert toy["met"] == (rec["speedup_vs_reference"] >= bench.TARGET_ENGINE_TOY)

    bench.write_markdown(tmp_path / "BENCHMARKS.md", engine_records, checks, {}, "smoke", [], 0.0)
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "x floor" in md and "amortize_after=" in md and "first_call_seconds=" in md
