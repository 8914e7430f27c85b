"""Optional benchmark group: the library's RHG and CG against JAX-jit references on hyperclean-linear.

The strongest functional peer of ``bilevel.hypergrad`` is the same computation written in JAX and compiled whole
by XLA (``jax.jit`` of ``jax.grad`` through a ``lax.scan`` unroll for RHG; ``jax.linearize`` Hessian-vector
products in a ``fori_loop`` for CG). This group times both on the problem ``bilevel bench`` uses
(``make_hyperclean("linear", train=5000, val=5000, dataset="fashion-mnist")``, K = 100, inner_lr = 0.3, CG with
exactly 10 iterations, float32), in the same run, and checks that they compute the same hypergradient.

JAX is not a dependency of bilevel: the JAX side (:mod:`hyperclean`, ``benchmarks/jax_refs/hyperclean.py``) runs as a
subprocess in another interpreter, found by :func:`find_jax_python`, in this order:

1. the ``jax_python`` argument (``--jax-python``),
2. the environment variable ``BILEVEL_JAX_PYTHON``,
3. ``benchmarks/stochastic/jax/.venv/bin/python``, the venv made by ``benchmarks/stochastic/jax/setup.sh``
   (jax[cpu] 0.10.2; the same venv serves benchmarks/stochastic/jax/compare.py).

The first of these that is set decides (a path that is not an executable file skips the group rather than falling
back to the next). Without one, :func:`bench_jax` logs how to get one and returns no records.

Method: the problem's arrays (taken from the benchmark problem's own objectives and checked against them) go to
a temporary .npz; then ``rounds`` rounds alternate the two sides (round r: JAX first when r is even, the library
first when odd), so that a drift of the machine's speed is shared. A JAX round is one subprocess: compile
(reported separately, never timed with the calls), ``warmup`` untimed calls, ``repeats`` timed calls
(``block_until_ready``). A library round is :func:`bilevel_benchmarks.bench.time_round_robin` over the methods
(``warmup`` discarded rounds, ``repeats`` timed ones). Both sides get torch's thread count
(``torch.get_num_threads()``; XLA_FLAGS for JAX) and inherit this process's CPU affinity. The ratio
bilevel / JAX is formed per round (median over rounds, with min and max).

Standalone (prints the Markdown table)::

    benchmarks/stochastic/jax/setup.sh                       # once, if benchmarks/stochastic/jax/.venv is missing
    taskset -c 0 .venv/bin/python -m bilevel_benchmarks.jax_refs.group --rounds 3 --repeats 5
"""
from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch


HERE = Path(__file__).resolve().parent
JAX_SCRIPT = HERE / "hyperclean.py"
#: the venv of benchmarks/stochastic/jax/setup.sh (absent from an installed wheel: there the group needs 1. or 2.)
DEFAULT_JAX_PYTHON = HERE.parent / "stochastic" / "jax" / ".venv" / "bin" / "python"
ENV_VAR = "BILEVEL_JAX_PYTHON"
HOW_TO_ENABLE = (f"run benchmarks/stochastic/jax/setup.sh (creates benchmarks/stochastic/jax/.venv with jax[cpu]) or "
                 f"set {ENV_VAR} to a Python interpreter that has jax")
METHODS = ("rhg", "cg")
#: relative max error (max |g_jax - g_lib| / max |g_lib|) below which the two hypergradients agree (float32)
AGREE_RTOL = 1e-3

#: The group's configuration (``bench_jax(cfg)`` overrides any of these keys).
DEFAULT_CFG: Dict[str, Any] = dict(train=5000, val=5000, K=(100,), methods=METHODS, rounds=3, repeats=5, warmup=1,
                                   lr=0.3, timeout=900)


# ------------------------------------------------------------------------------------------ the JAX interpreter
def find_jax_python(jax_python: Optional[str] = None) -> Tuple[Optional[str], str]:
    """``(path, where it came from)`` of the interpreter with JAX, or ``(None, why not)``."""
    if jax_python is not None:
        cand, src = str(jax_python), "argument"
    elif os.environ.get(ENV_VAR):
        cand, src = os.environ[ENV_VAR], f"${ENV_VAR}"
    elif DEFAULT_JAX_PYTHON.exists():
        cand, src = str(DEFAULT_JAX_PYTHON), "benchmarks/stochastic/jax/.venv"
    else:
        return None, f"no JAX interpreter (no argument, ${ENV_VAR} unset, {DEFAULT_JAX_PYTHON} missing)"
    if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
        return None, f"JAX interpreter {cand!r} ({src}) is not an executable file"
    return cand, src


def child_env(threads: int) -> Dict[str, str]:
    """The JAX subprocess's environment: ``threads`` for OpenMP/MKL/OpenBLAS, the CPU backend. (XLA's own thread
    flags are set by the script from ``--threads``.)"""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["JAX_PLATFORMS"] = "cpu"
    return env


# ------------------------------------------------------------------------------------------ the problem's arrays
def problem_arrays(prob: Any) -> Dict[str, np.ndarray]:
    """The data of a ``make_hyperclean("linear", ...)`` problem: X_train, y_train, X_val, y_val, x0, l2, classes
    (floats in the problem's dtype, labels int32; the JAX script computes in float32 unless told ``--x64``).

    Read from the objectives' closures (tasks/hyperclean.py ``build``: ``lower`` closes over X_tr, y_tr, l2;
    ``upper`` over X_val, y_val) and then checked: the task's lower and upper objectives at a random (x, y) must
    equal the formulas the JAX script evaluates on these arrays. ValueError when ``prob`` is not such a problem.
    """
    if prob.name != "hyperclean-linear" or not isinstance(prob.y0, dict) or set(prob.y0) != {"weight", "bias"}:
        raise ValueError(f"the JAX references cover hyperclean-linear only, got {prob.name!r}")
    try:
        lo = inspect.getclosurevars(prob.lower).nonlocals
        up = inspect.getclosurevars(prob.upper).nonlocals
        X_tr, y_tr, l2 = lo["X_tr"], lo["y_tr"], float(lo.get("l2", 0.0))
        X_val, y_val = up["X_val"], up["y_val"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"cannot read the data of {prob.name!r} from its objectives ({err}); "
                         "src/bilevel/app/tasks/hyperclean.py build() changed") from err
    _check_formulas(prob, X_tr, y_tr, X_val, y_val, l2)
    cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return {"X_train": cpu(X_tr), "y_train": cpu(y_tr).astype(np.int32),
            "X_val": cpu(X_val), "y_val": cpu(y_val).astype(np.int32),
            "x0": cpu(prob.x), "l2": np.float64(l2),
            "classes": np.int64(prob.y0["weight"].shape[0])}


def _check_formulas(prob: Any, X_tr, y_tr, X_val, y_val, l2: float) -> None:
    g = torch.Generator().manual_seed(0)
    dev, dt = prob.x.device, prob.x.dtype
    x = torch.randn(prob.x.shape, generator=g, dtype=torch.float64).to(dev, dt)
    y = {k: (0.01 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(dev, dt) for k, v in prob.y0.items()}
    with torch.no_grad():
        def ce(X, labels):
            return torch.nn.functional.cross_entropy(X.double() @ y["weight"].double().T + y["bias"].double(),
                                                     labels, reduction="none")
        f = (torch.sigmoid(x.double()) * ce(X_tr, y_tr)).mean() + l2 * (y["weight"].double() ** 2).sum()
        F = ce(X_val, y_val).mean()
        got_f, got_F = float(prob.lower(x, y)), float(prob.upper(x, y))
    for name, want, got in (("lower", float(f), got_f), ("upper", float(F), got_F)):
        if abs(want - got) > 1e-4 * max(1.0, abs(want)):
            raise ValueError(f"{prob.name}: the task's {name} objective ({got}) differs from the JAX formula "
                             f"({want}); src/bilevel/app/tasks/hyperclean.py changed")


def write_npz(prob: Any, path: Any, K: int, cg_iters: int = 10) -> Path:
    """The .npz the JAX script reads: :func:`problem_arrays` plus ``lr``, ``K`` and ``cg_iters``."""
    path = Path(path)
    np.savez(path, **problem_arrays(prob), lr=np.float64(prob.lr), K=np.int64(K), cg_iters=np.int64(cg_iters))
    return path


# ------------------------------------------------------------------------------------------ the two sides
def run_jax(jax_python: str, npz: Path, K: int, methods: Sequence[str], threads: int, repeats: int, warmup: int,
            timeout: float = 900) -> Dict[str, Any]:
    """One JAX round: the script's JSON (RuntimeError with the end of its stderr when it fails)."""
    cmd = [jax_python, str(JAX_SCRIPT), str(npz), "--methods", ",".join(methods), "--K", str(K),
           "--threads", str(threads), "--repeats", str(repeats), "--warmup", str(warmup)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"JAX reference failed (rc {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def max_rel_diff(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|`` (``b``: the library's hypergradient)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a - b), initial=0.0))


# ------------------------------------------------------------------------------------------ the group
def bench_jax(cfg: Optional[Dict[str, Any]] = None, dataset: str = "fashion-mnist",
              log: Callable[[str], None] = print, jax_python: Optional[str] = None,
              prob: Any = None) -> List[Dict[str, Any]]:
    """The group's records (one per method and K), or ``[]`` (logged) when no JAX interpreter is found.

    ``cfg``: keys of :data:`DEFAULT_CFG` (train, val: the problem's sizes when ``prob`` is None; K: an int or a
    sequence; methods; rounds; repeats; warmup; timeout: seconds per JAX round; CG runs the iterations of
    ``bilevel bench``'s cg). ``prob``: a CPU ``make_hyperclean("linear", ...)`` problem (``bilevel bench`` passes its own); None builds one on ``dataset``.
    RuntimeError when a JAX round fails.
    """
    c = {**DEFAULT_CFG, **(cfg or {})}
    Ks = (c["K"],) if isinstance(c["K"], int) else tuple(c["K"])
    methods = tuple(c["methods"])
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"the JAX references cover {', '.join(METHODS)}, not {m!r}")
    py, how = find_jax_python(jax_python)
    if py is None:
        log(f"  jax group skipped: {how}; to enable it, {HOW_TO_ENABLE}")
        return []
    if prob is None:
        from bilevel_benchmarks.bench import make_hyperclean

        prob = make_hyperclean("linear", c["train"], c["val"], dataset, lr=c["lr"])
    if prob.x.device.type != "cpu":
        log(f"  jax group skipped: the JAX references run on the CPU, the problem is on {prob.x.device}")
        return []
    from bilevel_benchmarks.bench import lib_options, library_call, time_round_robin

    cg_iters = lib_options("cg", 1, prob)["cg_steps"]  # what `bilevel bench` times (and the JAX side must do)

    threads = torch.get_num_threads()
    log(f"  jax group: {py} ({how}), {threads} thread(s), {c['rounds']} round(s) x {c['repeats']} calls per side")
    out: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bilevel-jax-") as tmp:
        npz = write_npz(prob, Path(tmp) / "hyperclean.npz", Ks[0], cg_iters)
        for K in Ks:
            fns = {m: library_call(prob, m, K) for m in methods}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CG with a fixed number of iterations warns that it did not converge
                lib_grad = {m: fns[m]().grad.detach().cpu().numpy() for m in methods}
            jax_rounds: List[Dict[str, Any]] = []
            lib_rounds: List[Dict[str, List[float]]] = []
            t0 = time.perf_counter()
            for r in range(c["rounds"]):
                for side in (("jax", "lib") if r % 2 == 0 else ("lib", "jax")):
                    if side == "jax":
                        jax_rounds.append(run_jax(py, npz, K, methods, threads, c["repeats"], c["warmup"],
                                                  c["timeout"]))
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            lib_rounds.append(time_round_robin(fns, c["warmup"], c["repeats"]))
            first = jax_rounds[0]
            for m in methods:
                jr = [j["methods"][m] for j in jax_rounds]
                j_med = [x["median_s"] for x in jr]
                l_med = [statistics.median(lr[m]) for lr in lib_rounds]
                ratios = [a / b for a, b in zip(l_med, j_med) if b > 0]
                diff = max_rel_diff(first["methods"][m]["hypergrad"], lib_grad[m])
                rec = {
                    "problem": prob.name, "method": m, "K": K, "inner_steps": K, "group": "jax", "jax_group": True,
                    "jax_seconds": statistics.median(s for x in jr for s in x["samples_s"]),
                    "bilevel_seconds": statistics.median(s for lr in lib_rounds for s in lr[m]),
                    "ratio_bilevel_to_jax": statistics.median(ratios) if ratios else None,
                    "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                    "jax_compile_seconds": statistics.median(x["compile_s"] for x in jr),
                    "jax_matmul_pair_seconds": statistics.median(j["matmul_pair"]["pair_s"] for j in jax_rounds),
                    "jax_first_call_seconds": statistics.median(x["first_call_s"] for x in jr),
                    "max_rel_diff": diff, "agree": bool(diff < AGREE_RTOL and all(x["finite"] for x in jr)),
                    "jax_round_medians": j_med, "bilevel_round_medians": l_med, "ratio_rounds": ratios,
                    "jax_samples": [x["samples_s"] for x in jr], "bilevel_samples": [lr[m] for lr in lib_rounds],
                    "rounds": c["rounds"], "repeats": c["repeats"], "warmup": c["warmup"],
                    "cg_iters": cg_iters if m == "cg" else None, "threads": threads,
                    "jax_versions": first["versions"], "xla_flags": first["xla_flags"], "jax_python": py,
                    "torch": torch.__version__, "note": prob.note,
                    # the keys every `bilevel bench` record has (bench.REQUIRED_KEYS); no memory is measured here
                    "peak_mem_mb": None, "ratio_to_inner_loop": None, "ratio_to_reference": None,
                }
                rec["seconds_per_iter"] = rec["bilevel_seconds"]
                out.append(rec)
                if not rec["agree"]:
                    log(f"  WARNING jax group: {m} K={K}: JAX and bilevel hypergradients differ (max rel. diff "
                        f"{diff:.2e} >= {AGREE_RTOL:g})")
            log(f"  jax group K={K}: " + ", ".join(
                f"{r['method']} JAX {r['jax_seconds'] * 1e3:.0f}ms / bilevel {r['bilevel_seconds'] * 1e3:.0f}ms "
                f"(x{r['ratio_bilevel_to_jax']:.2f}, compile {r['jax_compile_seconds']:.1f}s, "
                f"diff {r['max_rel_diff']:.1e})" for r in out[-len(methods):])
                + f"  [{time.perf_counter() - t0:.0f}s]")
    return out


def markdown_table(records: Sequence[Dict[str, Any]]) -> str:
    """The records as a Markdown table, followed by the versions and settings they were measured with."""
    if not records:
        return "_jax group not run: " + HOW_TO_ENABLE + "._\n"
    lines = ["| problem | method | K | JAX jit s | bilevel s | bilevel / JAX (min-max) | JAX compile s "
             "| max rel. diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['problem']} | {r['method'].upper()} | "
                     f"{r['K']} | {r['jax_seconds']:.4g} | {r['bilevel_seconds']:.4g} | "
                     f"{r['ratio_bilevel_to_jax']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                     f"{r['jax_compile_seconds']:.2f} | {r['max_rel_diff']:.1e}"
                     + ("" if r["agree"] else " (DIFFER)") + " |")
    r0 = records[0]
    v = r0.get("jax_versions", {})
    lines += ["", f"Seconds per call: median of {r0['rounds']} round(s) x {r0['repeats']} calls per side, sides "
              f"alternating by round; the ratio is the median of the per-round ratios. {r0['threads']} thread(s); "
              f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, XLA_FLAGS `{r0['xla_flags']}`; torch {r0['torch']}. "
              f"Compile time (JAX `jit(...).lower(...).compile()`) is not in the timed calls. Max rel. diff = "
              f"max |g_JAX - g_bilevel| / max |g_bilevel| (agreement: < {AGREE_RTOL:g}). Problem: {r0['note']}."]
    if r0.get("jax_matmul_pair_seconds"):
        lines += ["", f"XLA's two products of an inner step (X @ W' and G' @ X on the training features, each "
                  f"jit-compiled alone, median): {r0['jax_matmul_pair_seconds'] * 1e3:.3f} ms for the pair, to set "
                  "beside the floor pair the bench measures with torch's products (floor_pair_seconds)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bilevel_benchmarks.jax_refs.group", description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=DEFAULT_CFG["train"])
    p.add_argument("--val", type=int, default=DEFAULT_CFG["val"])
    p.add_argument("--K", default="100", help="comma-separated inner step counts")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--rounds", type=int, default=DEFAULT_CFG["rounds"])
    p.add_argument("--repeats", type=int, default=DEFAULT_CFG["repeats"])
    p.add_argument("--warmup", type=int, default=DEFAULT_CFG["warmup"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (both sides get it)")
    p.add_argument("--jax-python", default=None, help=f"interpreter with jax (default: ${ENV_VAR}, then "
                                                       "benchmarks/stochastic/jax/.venv/bin/python)")
    p.add_argument("--json", default=None, help="also write the records to this file")
    a = p.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    cfg = dict(train=a.train, val=a.val, K=tuple(int(k) for k in a.K.split(",")),
               methods=tuple(m.strip() for m in a.methods.split(",") if m.strip()), rounds=a.rounds,
               repeats=a.repeats, warmup=a.warmup)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    records = bench_jax(cfg, a.dataset, log, a.jax_python)
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))
    print(markdown_table(records), end="")
    return 0 if all(r["agree"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
