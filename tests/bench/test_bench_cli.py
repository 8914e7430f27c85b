"""`bilevel bench` on a tiny configuration writes bench.json with the required keys and BENCHMARKS.md."""
import json

import torch

from bilevel import bench
from bilevel.cli import main


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
    assert all(r["ratio_to_reference"] > 0 for r in records if r["method"] != "inner_loop")
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Target checks" in md and "torch" in md and "cpu_model" in md
    assert "met" in md
