"""``bvfim-fig3``: BVFIM supplement Fig. 3 -- wall time per hyper-iteration against the number of lower-level
parameters for BVFIM, CG, Neumann and RHG on Fashion-MNIST hyper-cleaning, the follower growing from the linear
model to one-hidden-layer MLPs of increasing width, under the paper's fair-time rule (T = K inner steps for RHG,
CG and Neumann, J = 20 solver iterations; BVFIM T_z = T / 2 z-steps and T_y = T / 4 barrier steps, so
T_z + 2 T_y = T -- bvfim's default split of ``inner_steps``).

Timing protocol. Every job is one method on one follower (a ``hyperclean`` configuration, runnable with
``bilevel run hyperclean``), but the jobs are not timed through ``run_task``: the runner evaluates the method
(a no-grad inner loop) inside its logged time, which would charge BVFIM (whose evaluation runs its whole z- and
y-loops) more than the others. Instead the four methods of one follower and seed are built on the same data and
timed **round-robin** in one process (one torch thread): ``warmup`` untimed rounds, then ``reps`` rounds in which
each method takes one real outer step (inner loop, hypergradient, Adam update of x) timed alone with
``time.perf_counter``; the method order rotates between rounds, and ``seconds_per_step`` is the median of the
``reps`` step times (on cuda the clock is read after ``torch.cuda.synchronize``). Load changes on the machine thus hit
every method of a group alike. Results are kept in
``runs/bvfim-fig3/<dataset>/<setting>/seed<k>/timing.json`` (read back when the configuration is unchanged);
groups run in ``--jobs`` processes. Besides the CSV this writes ``bvfim-fig3-steps.csv`` (every timed step, with
the CG / Neumann solver iterations and BVFIM's backtracks) and ``bvfim-fig3.png``.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import gc
import json
import math
import multiprocessing
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from bilevel.app.reproduce import _hyperclean as hc
from bilevel.app.reproduce.common import Context, Job, fmt_stat, markdown_table, row, stat

NAME = "bvfim-fig3"
TITLE = "BVFIM Fig. 3: time per hyper-iteration vs the number of lower-level parameters (hyper-cleaning)"
METHODS = ("RHG", "LS", "NS", "BVFIM")
LABELS = {"LS": "CG", "NS": "Neumann"}
METRICS = ("seconds_per_step", "lower_params")
STEPS_FILE = f"{NAME}-steps.csv"
TIMING_FILE = "timing.json"

#: input dimension and classes of the hyper-cleaning data sets
DATA_SHAPES = {"digits": (64, 10), "fashion-mnist": (784, 10), "mnist": (784, 10)}

SETTINGS: Dict[str, Dict[str, Any]] = {
    "smoke": {"dataset": "digits", "sizes": (60, 60, 100), "followers": ("linear", 16, 64), "inner_steps": 4,
              "inner_lr": 0.3, "outer_lr": 0.3, "noise": 0.5, "warmup": 0, "reps": 2},
    "cpu": {"dataset": "fashion-mnist", "sizes": (200, 200, 100), "followers": ("linear", 100, 300, 1000),
            "inner_steps": 100, "inner_lr": 0.3, "outer_lr": 0.3, "noise": 0.5, "warmup": 1, "reps": 5},
    "paper": {"dataset": "fashion-mnist", "sizes": (5000, 5000, 1000), "followers": ("linear", 100, 300, 1000, 3000),
              "inner_steps": 100, "inner_lr": 0.3, "outer_lr": 0.3, "noise": 0.5, "warmup": 2, "reps": 10},
}


def setting_name(follower: Any) -> str:
    """``"linear"`` or ``"mlp-<hidden>"``."""
    return "linear" if follower == "linear" else f"mlp-{int(follower)}"


def lower_params(config: Mapping[str, Any]) -> int:
    """Number of lower-level parameters (the follower's weights and biases) of a hyper-cleaning configuration.

    Linear: ``C D + C``; MLP with H hidden units: ``H D + H + C H + C`` (D inputs, C classes).
    """
    dim, classes = DATA_SHAPES[config["dataset"]]
    if config["model"] == "linear":
        return classes * dim + classes
    h = int(config["hidden"])
    return h * dim + h + classes * h + classes


def jobs(scale: str, seeds: int, data_root: Any = None) -> List[Job]:
    s = SETTINGS[scale]
    table = hc.paper_methods(s["inner_steps"], n_train=s["sizes"][0], inner_lr=s["inner_lr"])
    out = []
    for seed in range(seeds):
        for follower in s["followers"]:
            for label in METHODS:
                method, opts = table[label]
                model = "linear" if follower == "linear" else "mlp"
                cfg = hc.config(method=method, method_options=opts, seed=seed, dataset=s["dataset"], model=model,
                                sizes=s["sizes"], noise=s["noise"], inner_steps=s["inner_steps"],
                                inner_lr=s["inner_lr"], outer_steps=s["warmup"] + s["reps"], outer_lr=s["outer_lr"],
                                hidden=100 if model == "linear" else int(follower), data_root=data_root, log_every=1)
                out.append(Job(s["dataset"], setting_name(follower), LABELS.get(label, label), seed, "hyperclean",
                               cfg, METRICS, extra={"warmup": s["warmup"], "reps": s["reps"]}))
    return out


# ------------------------------------------------------------------------------------------ timing
def time_group(configs: Mapping[str, Mapping[str, Any]], warmup: int, reps: int,
               device: str = "cpu") -> Dict[str, Any]:
    """Time one outer step of each method round-robin on one shared hyper-cleaning problem.

    Parameters
    ----------
    configs : mapping
        Method label -> ``hyperclean`` configuration; they may differ only in ``method`` / ``method_options``.
    warmup, reps : int
        Untimed rounds, then timed rounds (each method takes one outer step per round).
    device : str
        Where the problem lives (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``); on cuda each timed step ends with
        ``torch.cuda.synchronize``.

    Returns
    -------
    dict
        ``lower_params`` and, per label, ``seconds`` (the ``reps`` step times), ``solver_iterations`` and
        ``backtracks`` (per timed step, None when the method has no such counter) and ``error`` (None, or the
        message of an exception that stopped the method).
    """
    import torch

    from bilevel import schedules
    from bilevel.api import OuterLoop
    from bilevel.app.device import resolve_device, synchronizer
    from bilevel.app.tasks import hyperclean as H

    torch.set_num_threads(1)
    labels = list(configs)
    shared = [{k: v for k, v in c.items() if k not in ("method", "method_options")} for c in configs.values()]
    if any(s != shared[0] for s in shared[1:]):
        raise ValueError("the configurations of a timing group must differ only in method and method_options")
    base = dict(configs[labels[0]])
    where = resolve_device(device)
    run = H.build(H.config_with_defaults(**{k: v for k, v in base.items() if k not in ("method_options", "device")},
                                         device=str(where)))
    upper, lower = run.objectives(0)
    loops = {}
    for label in labels:
        c = configs[label]
        loops[label] = OuterLoop(run.x0, run.y0, method=c["method"], outer_lr=c["outer_lr"],
                                 outer_optimizer=c["outer_optimizer"], inner_steps=c["inner_steps"],
                                 inner_lr=c["inner_lr"], **dict(run.loop_options or {}),
                                 **{k: schedules.from_config(v) for k, v in c["method_options"].items()})
    out: Dict[str, Any] = {"lower_params": int(sum(v.numel() for v in run.y0.values())),
                           "methods": {lb: {"seconds": [], "solver_iterations": [], "backtracks": [], "error": None}
                                       for lb in labels}}
    gc.collect()
    gc.freeze()  # the collections before each timed step then only scan the objects the steps create
    try:
        with warnings.catch_warnings():  # CG's "not converged" warnings: its iterations are recorded instead
            warnings.simplefilter("ignore")
            _rounds(loops, labels, upper, lower, warmup, reps, out["methods"], synchronizer(where))
    finally:
        gc.unfreeze()
    return out


def _rounds(loops: Mapping[str, Any], labels: Sequence[str], upper: Any, lower: Any, warmup: int, reps: int,
            results: Dict[str, Any], sync: Any = None) -> None:
    """``warmup + reps`` rounds of one outer step per method (order rotated every round); fills ``results``.
    ``sync`` (``torch.cuda.synchronize`` of the device, None on the CPU) runs before each clock reading."""
    for r in range(warmup + reps):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            res = results[label]
            if res["error"] is not None:
                continue
            gc.collect()
            try:
                if sync is not None:
                    sync()
                t0 = time.perf_counter()
                record = loops[label].step(upper, lower)
                if sync is not None:
                    sync()
                dt = time.perf_counter() - t0
            except Exception as err:  # noqa: BLE001 - recorded: the report shows the method as failed
                res["error"] = f"{type(err).__name__}: {err}"
                continue
            if r >= warmup:
                res["seconds"].append(dt)
                it = record.get("solver_iterations")
                res["solver_iterations"].append(None if it is None else int(it))
                bt = record.get("backtracks")
                res["backtracks"].append(None if bt is None else int(bt))


def _group_key(job: Job) -> Tuple[str, str, int]:
    return job.dataset, job.setting, job.seed


def _run_group(configs: Dict[str, Dict[str, Any]], warmup: int, reps: int, path: str,
               device: str = "cpu") -> Dict[str, Any]:
    """Time a group (or read its ``timing.json`` back when the configurations, the rounds and the device --
    ``cpu`` for files written before devices were recorded -- are unchanged)."""
    from bilevel.app.device import device_name, resolve_device

    where = device_name(resolve_device(device))
    p = Path(path)
    if p.exists():
        saved = json.loads(p.read_text())
        if (saved.get("configs") == _plain(configs) and saved.get("warmup") == warmup and saved.get("reps") == reps
                and saved.get("device", "cpu") == where):
            return saved
    result = time_group(configs, warmup, reps, where)
    result.update(configs=_plain(configs), warmup=warmup, reps=reps, device=where)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(p)
    return result


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def run(ctx: Context) -> List[Dict[str, Any]]:
    from tqdm.auto import tqdm

    js = jobs(ctx.scale, ctx.seeds, ctx.data_root)
    s = SETTINGS[ctx.scale]
    groups: Dict[Tuple[str, str, int], List[Job]] = {}
    for job in js:
        groups.setdefault(_group_key(job), []).append(job)
    # largest followers first: better load balance over the worker processes
    order = sorted(groups, key=lambda k: -lower_params(groups[k][0].config))
    root = ctx.runs_dir / NAME
    args = {k: ({j.method: j.config for j in groups[k]}, s["warmup"], s["reps"],
                str(root / f"{k[0]}/{k[1]}/seed{k[2]}" / TIMING_FILE), ctx.device) for k in order}
    results: Dict[Tuple[str, str, int], Dict[str, Any]] = {}
    bar = tqdm(total=len(order), desc=NAME, disable=not ctx.progress, unit="group")
    try:
        if ctx.workers == 1:
            for k in order:
                results[k] = _run_group(*args[k])
                bar.update(1)
        else:
            with cf.ProcessPoolExecutor(max_workers=ctx.workers,
                                        mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_run_group, *args[k]): k for k in order}
                for fut in cf.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    finally:
        bar.close()
    rows, steps = [], []
    for job in js:
        res = results[_group_key(job)]
        m = res["methods"][job.method]
        sec = statistics.median(m["seconds"]) if m["seconds"] and m["error"] is None else float("nan")
        rows.append(row(NAME, job.dataset, job.setting, job.method, job.seed, "seconds_per_step", sec))
        rows.append(row(NAME, job.dataset, job.setting, job.method, job.seed, "lower_params", res["lower_params"]))
        for i, t in enumerate(m["seconds"]):
            steps.append({"setting": job.setting, "method": job.method, "seed": job.seed,
                          "lower_params": res["lower_params"], "rep": i, "seconds": t,
                          "solver_iterations": _blank(m["solver_iterations"][i]),
                          "backtracks": _blank(m["backtracks"][i])})
    with open(ctx.out_dir / STEPS_FILE, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["setting", "method", "seed", "lower_params", "rep", "seconds",
                                           "solver_iterations", "backtracks"])
        w.writeheader()
        w.writerows(steps)
    _figure(rows, ctx.out_dir / f"{NAME}.png")
    return rows


def _blank(v: Any) -> Any:
    return "" if v is None else v


# ------------------------------------------------------------------------------------------ summary
def _labels() -> List[str]:
    return [LABELS.get(k, k) for k in METHODS]


def _settings(rows: Sequence[Mapping[str, Any]]) -> List[Tuple[str, float]]:
    """(setting, lower_params) sorted by the number of parameters."""
    out = {}
    for r in rows:
        if r["metric"] == "lower_params":
            out[r["setting"]] = r["value"]
    return sorted(out.items(), key=lambda kv: kv[1])


def _mean(rows: Sequence[Mapping[str, Any]], **match: Any) -> float:
    st = stat(rows, **match)
    return float("nan") if st is None else st[0]


def slope(params: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(params) (NaN with fewer than two finite points)."""
    pts = [(math.log(p), math.log(t)) for p, t in zip(params, seconds) if p > 0 and t > 0 and math.isfinite(t)]
    if len(pts) < 2:
        return float("nan")
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def _figure(rows: Sequence[Mapping[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = _settings(rows)
    if not settings:
        return
    params = [p for _, p in settings]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for label in _labels():
        st = [stat(rows, method=label, setting=s, metric="seconds_per_step") for s, _ in settings]
        mean = [np.nan if v is None else v[0] for v in st]
        err = [0.0 if v is None else v[1] for v in st]
        axes[0].errorbar(params, mean, yerr=err, marker="o", capsize=3, label=label)
    bv = [_mean(rows, method="BVFIM", setting=s, metric="seconds_per_step") for s, _ in settings]
    for label in _labels():
        if label == "BVFIM":
            continue
        other = [_mean(rows, method=label, setting=s, metric="seconds_per_step") for s, _ in settings]
        axes[1].plot(params, [a / b for a, b in zip(bv, other)], marker="o", label=f"BVFIM / {label}")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set(xscale="log", yscale="log", xlabel="lower-level parameters", ylabel="seconds per outer step")
    axes[1].set(xscale="log", xlabel="lower-level parameters", ylabel="time ratio")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _solver_note(meta: Mapping[str, Any], inner_steps: int) -> str:
    """Median CG / Neumann iterations per setting and BVFIM backtracks, from the steps CSV when present."""
    base = meta.get("out_dir_abs")
    if not base or not (Path(base) / STEPS_FILE).exists():
        return ""
    with open(Path(base) / STEPS_FILE, newline="") as fh:
        steps = list(csv.DictReader(fh))
    parts = []
    for setting in dict.fromkeys(r["setting"] for r in steps):
        its = [int(r["solver_iterations"]) for r in steps if r["setting"] == setting and r["method"] == "CG"
               and r["solver_iterations"] != ""]
        bts = [int(r["backtracks"]) for r in steps if r["setting"] == setting and r["method"] == "BVFIM"
               and r["backtracks"] != ""]
        if its or bts:
            parts.append(f"{setting}: CG {statistics.median(its) if its else '-'} iterations, BVFIM "
                         f"{statistics.median(bts) if bts else '-'} backtracks")
    if not parts:
        return ""
    return ("Median per timed step -- " + "; ".join(parts) + ". CG stops early when it meets a direction of "
            "non-positive curvature (the MLP follower's Hessian is indefinite), so on the MLPs it may do fewer "
            "than J = 20 Hessian-vector products and look cheaper than its budget.")


def report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    s = SETTINGS[meta["scale"]]
    settings = _settings(rows)
    others = [lb for lb in _labels() if lb != "BVFIM"]
    body = []
    ratios: Dict[str, List[float]] = {lb: [] for lb in others}
    for setting, params in settings:
        cells = [setting, f"{int(params):,}"]
        for label in _labels():
            cells.append(fmt_stat(stat(rows, method=label, setting=setting, metric="seconds_per_step"), 3))
        bv = _mean(rows, method="BVFIM", setting=setting, metric="seconds_per_step")
        for label in others:
            r = bv / _mean(rows, method=label, setting=setting, metric="seconds_per_step")
            ratios[label].append(r)
            cells.append("-" if not math.isfinite(r) else f"{r:.2f}")
        body.append(cells)
    table = markdown_table(["follower", "LL params"] + [f"{lb} s/step" for lb in _labels()]
                           + [f"BVFIM/{lb}" for lb in others], body)
    params = [p for _, p in settings]
    slopes = {lb: slope(params, [_mean(rows, method=lb, setting=st, metric="seconds_per_step") for st, _ in settings])
              for lb in _labels()}
    fastest = []
    for setting, _ in settings:
        means = {lb: _mean(rows, method=lb, setting=setting, metric="seconds_per_step") for lb in _labels()}
        finite = {k: v for k, v in means.items() if math.isfinite(v)}
        fastest.append(min(finite, key=finite.get) if finite else "-")
    faster = bool(fastest) and all(f == "BVFIM" for f in fastest)
    # the trend of each ratio: a least-squares fit of log(ratio) on log(params) over all followers, expressed as
    # the ratio's relative change over the whole range of the fit (more robust to one noisy point than endpoints)
    span = math.log(params[-1] / params[0]) if len(params) >= 2 and params[0] > 0 else 0.0
    change = {lb: math.exp(slope(params, v) * span) - 1 if math.isfinite(slope(params, v)) else float("nan")
              for lb, v in ratios.items()}
    grows_all = all(math.isfinite(change[lb]) and change[lb] < -0.10 for lb in ("RHG", "CG"))
    claim = (f"The paper's claim, part 1 (BVFIM takes the least time per hyper-iteration): "
             f"**{'holds' if faster else 'does not hold'}** here (fastest per follower: "
             + ", ".join(f"{st}: {f}" for (st, _), f in zip(settings, fastest)) + "). "
             f"Part 2 (BVFIM's advantage grows with the number of LL parameters, i.e. the ratios BVFIM/RHG and "
             f"BVFIM/CG fall by more than 10% over the range of followers, in a log-log fit over all of them): "
             f"**{'holds' if grows_all else 'does not hold'}** here (BVFIM/RHG "
             + " -> ".join(f"{r:.2f}" for r in ratios["RHG"]) + f", fitted change {change['RHG']:+.0%}; BVFIM/CG "
             + " -> ".join(f"{r:.2f}" for r in ratios["CG"]) + f", {change['CG']:+.0%}; BVFIM/Neumann "
             + " -> ".join(f"{r:.2f}" for r in ratios["Neumann"]) + f", {change['Neumann']:+.0%}). "
             "Log-log slopes of time vs LL parameters: "
             + ", ".join(f"{lb} {v:.2f}" for lb, v in slopes.items()) + ".")
    K = s["inner_steps"]
    tz, ty = max(1, K // 2), max(1, K // 4)
    why = (f"Why. Cost of one hyper-iteration in passes over the n training samples (one gradient of f = 1 unit, "
           f"a forward evaluation ~ 1/2, a Hessian-vector product ~ 2-4): RHG = K = {K} taped gradient steps + a "
           f"reverse pass of K vector-Jacobian products ~ 3K = {3 * K}; CG and Neumann = K plain steps + J = 20 "
           f"Hessian-vector products ~ K + 2J = {K + 40} or more (CG fewer when it stops early); BVFIM = T_z = {tz} "
           f"gradients of f + T_y = {ty} barrier steps (one backward pass through F and f, plus a forward f "
           f"evaluation per trial point: ~ 2.5 units, 1/2 more per backtrack) + 3 gradients for the hypergradient "
           f"~ T_z + 2.5 T_y + 3 = {tz + 2.5 * ty + 3:g}, with no second-order products and no tape. So the expected "
           f"ratios are about BVFIM/RHG ~ {(tz + 2.5 * ty + 3) / (3 * K):.2f} and BVFIM/CG ~ "
           f"{(tz + 2.5 * ty + 3) / (K + 40):.2f} (higher when CG stops early). Every unit costs ~ n x (LL "
           "parameters) operations for every method, so on a CPU, where time follows FLOPs once the follower is "
           "not tiny, the ratios should stay roughly constant as the width grows (parallel lines in the log-log "
           "plot); on the smallest follower per-call overheads (Python, kernel dispatch) and BVFIM's backtracking "
           "weigh more. On a GPU (the paper's RTX 2060S) small followers leave the device idle, so all methods take "
           "latency-bound, similar times and the FLOP ratio only shows as the follower grows -- a plausible reason "
           "for the growing gap of the paper's Fig. 3, together with RHG's O(K x LL parameters) tape; we cannot "
           "check it without a GPU.")
    notes = _solver_note(meta, K)
    fig = f"![time vs parameters]({meta['figure']})" if meta.get("figure") else ""
    followers = ", ".join(setting_name(f) for f in s["followers"])
    protocol = (f"Protocol at this scale: {s['dataset']}, {s['sizes'][0]} train ({int(s['noise'] * 100)}% corrupted) "
                f"/ {s['sizes'][1]} val, followers {followers} (the paper's widths are not stated; ours), T = K = {K}, "
                f"inner step {s['inner_lr']}, Adam outer step {s['outer_lr']}, CG and Neumann with J = 20 "
                f"iterations, BVFIM with T_z = {tz}, T_y = {ty} and (mu1, theta, tau) = (1, 1, 1) / 1.01^k on loss sums, i.e. "
                f"divided by {s['sizes'][0]} on our mean losses (mu2 = 1). Per "
                f"follower and seed the four methods are timed round-robin in one process with one torch thread "
                f"({s['warmup']} warm-up rounds, then the median of {s['reps']} timed outer steps per method; "
                "evaluation not included); ± = std over seeds. The numbers depend on the machine and its load "
                "(the cpu-scale runs share 2 cores with other jobs); the ratios within a follower are the robust part. "
                "Paper: Fashion-MNIST and CIFAR-10 on a GPU, split sizes and widths not stated.")
    return "\n\n".join(p for p in (table, claim, fig, why, notes, protocol) if p)
