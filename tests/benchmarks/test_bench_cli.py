"""`bilevel bench` on a tiny configuration writes bench.json with the required keys and BENCHMARKS.md."""
import json

import pytest
import torch

from bilevel_benchmarks import bench
from bilevel.app.cli import main


def test_saved_peak_excludes_data_and_grows_with_the_tape():
    data = torch.randn(2000, 50)
    w = torch.zeros(50, requires_grad=True)

    def unroll(K):
        def fn():
            y = w
            for _ in range(K):
                y = y - 0.1 * torch.tanh(data @ y).mean() * y
            y.sum().backward()
        return fn

    small, big = bench.saved_peak_mb(unroll(2)), bench.saved_peak_mb(unroll(8))
    assert big > 3 * small
    assert small < data.numel() * 4 / 2 ** 20  # the data set itself is not counted


def test_bench_smoke_cli(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--smoke", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    records = json.loads((tmp_path / "bench.json").read_text())
    assert records
    for r in records:
        for key in bench.REQUIRED_KEYS:
            assert key in r
        assert r["seconds_per_iter"] > 0
    problems = {r["problem"] for r in records}
    assert {"toy", "hyperclean-linear", "hyperclean-mlp", "hyperclean-linear-wd", "fewshot-conv4"} <= problems
    assert any(r["method"].startswith("rhg+checkpoint=") for r in records)
    fhg = [r for r in records if r["problem"] == "hyperclean-linear-wd"]
    assert fhg and all(r["mem_measure"] == "rss" and r["peak_mem_mb"] is not None for r in fhg)
    assert all(r["rhg_peak_mem_mb"] is not None and r["reference_peak_mem_mb"] is not None
               for r in fhg if r["method"] == "fhg")  # the torch.func reference too (hooks could not)
    fs = [r for r in records if r["problem"] == "fewshot-conv4" and r["method"] == "rhg"]
    assert fs and all(r["vmap_throughput_bound"] > 0 and r["backbone_seconds"] > 0 for r in fs)
    for r in (r for r in records if r["problem"] == "fewshot-conv4"):  # floor: backbone share + head gradients
        K = r["inner_steps"]
        assert r["floor_pairs"] == (2 * K if r["method"] == "rhg" else K) and r["time_vs_floor"] > 0
        base = r["backbone_seconds"] if r["method"] == "rhg" else r["support_features_seconds"]
        assert r["floor_seconds"] > base > 0 and r["head_grad_seconds"] > 0  # every round's floor exceeds its base
    timed = [r for r in records if r.get("floor_unit_times")]  # the unit timed in the methods' own rounds
    assert {r["problem"] for r in timed} >= {"toy", "hyperclean-linear", "hyperclean-mlp"}
    assert {r["method"] for r in timed if r.get("memory_mode")} == {"inner_loop", "rhg"} | {
        r["method"] for r in records if r["method"].startswith("rhg+checkpoint=")}
    for r in timed:
        assert len(r["floor_unit_times"]) == len(r["times"])
        if r["floor_seconds"]:
            assert r["time_vs_floor"] == pytest.approx(
                bench.paired_ratio(r["times"], [r["floor_pairs"] * u for u in r["floor_unit_times"]]))
    assert all(r["ratio_to_reference"] > 0 for r in records if r["method"] != "inner_loop")
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Target checks" in md and "torch" in md and "cpu_model" in md
    assert "met" in md


def test_rss_peak_sees_a_transient_allocation():
    def alloc():
        t = torch.ones(10 * 2 ** 20)  # 40 MB, freed before the call returns
        return float(t[0])

    big = bench.rss_peak_mb(alloc)
    small = bench.rss_peak_mb(lambda: None)
    assert big is not None and 30 < big < 200
    assert small < 5


def test_rss_peak_sampler_fallback(monkeypatch):
    import time

    monkeypatch.setattr(bench, "_reset_peak_rss", lambda: False)  # as where /proc/self/clear_refs is read-only

    def alloc():
        t = torch.ones(10 * 2 ** 20)
        time.sleep(0.05)  # the sampler reads VmRSS every millisecond
        return float(t[0])

    assert 30 < bench.rss_peak_mb(alloc) < 200


def test_select_groups():
    assert bench.select_groups(None) == bench.GROUPS
    assert bench.select_groups(["fewshot", "fhg", "toy"]) == ("toy", "hyperclean-linear-wd", "fewshot-conv4")
    with pytest.raises(ValueError, match="unknown benchmark group"):
        bench.select_groups(["fewshots"])


def test_bench_only_runs_the_selected_groups(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--smoke", "--only", "toy", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    records = json.loads((tmp_path / "bench.json").read_text())
    assert records and {r["problem"] for r in records} == {"toy"}
    assert "partial run: only toy" in (tmp_path / "BENCHMARKS.md").read_text()


def _fhg_records(peaks, rhg=None):
    return [{"problem": "hyperclean-linear-wd", "method": "fhg", "inner_steps": K, "peak_mem_mb": m,
             "rhg_peak_mem_mb": rhg, "ratio_to_reference": None} for K, m in peaks]


def test_fhg_memory_target_uses_rss_with_slack():
    def check(records):
        (c,) = [c for c in bench.check_targets(records) if c["target"].startswith("fhg")]
        return c

    assert check(_fhg_records([(50, 1.45), (200, 1.52)]))["met"]  # +70 kB: within the resolution of RSS
    assert check(_fhg_records([(100, 5.5), (800, 6.3)], rhg=430.0))["met"]
    c = check(_fhg_records([(50, 10.7), (200, 43.1)]))  # what RHG does: O(K)
    assert not c["met"] and c["measured"] == pytest.approx(43.1 / 10.7)


def test_time_round_robin_rotates_the_order_and_batches_fast_calls():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = bench.time_round_robin(fns, warmup=0, reps=3)
    assert calls == list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}

    import time as _time
    counts = {"fast": 0, "slow": 0}

    def fast():
        counts["fast"] += 1

    def slow():
        counts["slow"] += 1
        _time.sleep(0.02)

    times = bench.time_round_robin({"fast": fast, "slow": slow}, warmup=1, reps=2, min_sample=0.01)
    assert counts["slow"] == 3  # 0.02 s > min_sample: one call per round
    assert counts["fast"] > 3 * 10  # batched after the warm-up round
    assert all(t < 0.001 for t in times["fast"]) and all(t >= 0.02 for t in times["slow"])


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # round 2 ran on a machine twice as slow for both callables: the per-round ratios stay 1.5
    assert bench.paired_ratio([1.5, 3.0, 1.5], [1.0, 2.0, 1.0]) == 1.5
    assert bench.paired_ratio([1.0, 4.0, 3.0], [1.0, 1.0, 1.0]) == 3.0
    assert bench.paired_ratio([], []) is None


def test_bench_compile_group_times_compiled_against_eager(tmp_path):
    records = bench.run(tmp_path, "smoke", log=lambda s: None, only=["compile"])
    by = {r["method"]: r for r in records}
    assert set(by) == {"inner_loop", "cg", "cg+compile_step"}
    c = by["cg+compile_step"]
    assert c["time_vs_eager"] > 0 and c["first_call_seconds"] > 0 and c["ratio_to_reference"] > 0
    for r in records:  # the floor, its unit timed in the group's rounds
        assert r["floor_pairs"] == bench.floor_pairs(r["method"], r["inner_steps"],
                                                     bench.lib_options(r["method"], r["inner_steps"],
                                                                       bench.make_toy()))
        assert len(r["floor_unit_times"]) == len(r["times"]) and r["time_vs_floor"] > 0
    checks = json.loads((tmp_path / "targets.json").read_text())["checks"]
    assert any("torch.compile" in ch["target"] for ch in checks)


def test_compile_group_is_left_out_of_quick_runs_unless_asked():
    assert "compile" in bench.DEFAULT_SKIP["quick"] and not bench.DEFAULT_SKIP["full"]
