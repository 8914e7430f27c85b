"""The optional JAX-reference group (benchmarks/jax_refs): skipped with a clear log line without a JAX interpreter,
the .npz it hands to the JAX script holds the problem's arrays, and -- where the JAX venv of
benchmarks/stochastic/jax/setup.sh exists (or $BILEVEL_JAX_PYTHON is set) -- the JAX and library hypergradients of RHG
and CG agree on a tiny problem."""
import os

import numpy as np
import pytest
import torch

from bilevel_benchmarks.bench import library_call, make_hyperclean, make_toy
from bilevel_benchmarks.jax_refs import group


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return make_hyperclean("linear", 200, 150, "digits")


def test_group_is_skipped_without_a_jax_interpreter(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-such-venv" / "bin" / "python")
    lines = []
    assert group.bench_jax({"K": 5}, "digits", lines.append, jax_python=missing) == []
    assert len(lines) == 1 and "jax group skipped" in lines[0] and missing in lines[0]
    assert "setup.sh" in lines[0] and group.ENV_VAR in lines[0]  # says how to enable it
    # the environment variable, when set, decides too (no fallback to the default venv)
    monkeypatch.setenv(group.ENV_VAR, missing)
    lines.clear()
    assert group.bench_jax({"K": 5}, "digits", lines.append) == []
    assert "jax group skipped" in lines[0] and f"${group.ENV_VAR}" in lines[0]
    assert "not run" in group.markdown_table([])


def test_find_jax_python_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    monkeypatch.setenv(group.ENV_VAR, str(b))
    assert group.find_jax_python(str(a)) == (str(a), "argument")
    assert group.find_jax_python() == (str(b), f"${group.ENV_VAR}")
    monkeypatch.delenv(group.ENV_VAR)
    monkeypatch.setattr(group, "DEFAULT_JAX_PYTHON", tmp_path / "absent")
    assert group.find_jax_python()[0] is None


def test_npz_holds_the_problems_arrays(tiny, tmp_path):
    path = group.write_npz(tiny, tmp_path / "p.npz", K=7, cg_iters=10)
    d = np.load(path)
    assert d["X_train"].shape == (200, 64) and d["X_train"].dtype == np.float32
    assert d["y_train"].shape == (200,) and d["y_train"].dtype == np.int32
    assert d["X_val"].shape == (150, 64) and d["y_val"].shape == (150,)
    assert d["x0"].shape == (200,) and not d["x0"].any()
    assert int(d["K"]) == 7 and int(d["cg_iters"]) == 10 and float(d["lr"]) == pytest.approx(0.3)
    assert float(d["l2"]) == 0.0 and int(d["classes"]) == 10
    assert set(np.unique(d["y_train"])) <= set(range(10))
    # the arrays are the objectives' own: the lower objective from them equals the task's at a random (x, y)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, generator=g)
    y = {"weight": 0.1 * torch.randn(10, 64, generator=g), "bias": 0.1 * torch.randn(10, generator=g)}
    logits = torch.from_numpy(d["X_train"]) @ y["weight"].T + y["bias"]
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(d["y_train"]).long(), reduction="none")
    assert float((torch.sigmoid(x) * ce).mean()) == pytest.approx(float(tiny.lower(x, y)), rel=1e-5)
    logits = torch.from_numpy(d["X_val"]) @ y["weight"].T + y["bias"]
    want = torch.nn.functional.cross_entropy(logits, torch.from_numpy(d["y_val"]).long())
    assert float(want) == pytest.approx(float(tiny.upper(x, y)), rel=1e-5)


def test_other_problems_are_refused():
    with pytest.raises(ValueError, match="hyperclean-linear only"):
        group.problem_arrays(make_toy())


def test_jax_and_library_hypergradients_agree(tiny):
    py, why = group.find_jax_python()
    if py is None:
        pytest.skip(f"no JAX venv ({why}); {group.HOW_TO_ENABLE}")
    lines = []
    recs = group.bench_jax({"K": 5, "rounds": 2, "repeats": 1, "warmup": 0}, "digits", lines.append, prob=tiny)
    assert [(r["method"], r["K"]) for r in recs] == [("rhg", 5), ("cg", 5)]
    for r in recs:
        assert r["agree"] and r["max_rel_diff"] < group.AGREE_RTOL, r["max_rel_diff"]
        assert r["jax_seconds"] > 0 and r["bilevel_seconds"] > 0 and r["jax_compile_seconds"] > 0
        assert r["jax_matmul_pair_seconds"] > 0
        assert len(r["ratio_rounds"]) == 2 and r["ratio_bilevel_to_jax"] > 0
        assert r["threads"] == 1 and "intra_op_parallelism_threads=1" in r["xla_flags"]
        assert r["jax_versions"]["jax"] and r["problem"] == "hyperclean-linear"
        for k in ("problem", "method", "inner_steps", "seconds_per_iter", "peak_mem_mb", "ratio_to_inner_loop",
                  "ratio_to_reference"):  # bench.REQUIRED_KEYS
            assert k in r
    table = group.markdown_table(recs)
    assert "| hyperclean-linear | RHG | 5 |" in table and "| hyperclean-linear | CG | 5 |" in table
    assert any("jax group K=5" in s for s in lines) and "XLA's two products of an inner step" in table
    assert os.path.isfile(recs[0]["jax_python"])


def test_jax_formulas_match_the_library_in_float64(tmp_path):
    """In float64 (``--x64``) the JAX references and the library compute the same numbers: same objectives, same
    inner steps, same CG convention (v0 = 0, exactly cg_iters iterations)."""
    import json
    import subprocess
    import warnings

    py, why = group.find_jax_python()
    if py is None:
        pytest.skip(f"no JAX venv ({why}); {group.HOW_TO_ENABLE}")
    prob = make_hyperclean("linear", 200, 150, "digits", dtype="float64")
    npz = group.write_npz(prob, tmp_path / "p64.npz", K=5, cg_iters=10)
    proc = subprocess.run([py, str(group.JAX_SCRIPT), str(npz), "--x64", "--threads", "1", "--repeats", "0",
                           "--warmup", "0"], env=group.child_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float64"
    for m in ("rhg", "cg"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib = library_call(prob, m, 5)().grad.numpy()
        assert group.max_rel_diff(out["methods"][m]["hypergrad"], lib) < 1e-9, m


def test_bench_jax_group_without_jax_notes_the_skip_and_checks_nothing(tmp_path, monkeypatch):
    """`bilevel bench --only jax` on a machine without the JAX venv: a note says how to enable it; no records."""
    from bilevel_benchmarks import bench

    monkeypatch.setenv("BILEVEL_JAX_PYTHON", str(tmp_path / "no-python"))
    records = bench.run(tmp_path / "out", mode="smoke", only=["jax"], log=lambda s: None)
    assert records == []
    md = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    assert "jax group skipped" in md and "## JAX-jit references (jax group)" in md
