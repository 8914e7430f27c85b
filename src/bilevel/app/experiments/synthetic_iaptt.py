"""IAPTT-GM's synthetic experiments (Liu et al., NeurIPS 2021, Sec. 4.1 and 4.3) as executable checks.

* **Toy without LLC (Eq. 10)**: ``min_{x in [1, 10]} x + x y`` s.t. ``y in argmin_{y in [-2, 2]} -sin(x y)``,
  unique solution ``(x*, y*) = (11 pi / 4, -2)``, ``F* = -11 pi / 4``. Fig. 1: final points / trajectories
  from the paper's three initializations ``(x0, y0) = (1, 2), (5, 1), (7, -1)`` for IAPTT-GM, IA-GM, RHG,
  CG, Neumann (and BDA when registered). Fig. 2: running average of ``k_bar`` and the cumulative time of the outer steps.
  Table 1: time and autograd-tape memory of one hypergradient, as ratios to RHG.
* **LLC problem (Eq. 13)**: ``min_x ||x - y2||^4 + ||y1 - e||^4`` s.t. ``(y1, y2) in argmin 1/2 ||y1||^2 - x'y1``,
  ``x in [-100, 100]^n``, solution ``x* = y1* = y2* = e``. Fig. 3 (left): ``||x - x*||`` and ``||y - y*||``
  for IA-GM vs IA-GM(A).

The paper's step sizes are in its supplement, which we do not have. Settings below are **our choice**:
toy: K = 20, inner step 0.002, Adam (lr 0.3) on (x, z), T = 300 outer steps (quick: T = 100, IAPTT-GM / IA-GM / RHG only);
LLC: n = 50, K = 20, inner step 0.05, SGD (lr 3e-4), T = 200, x0 = 0, z0 = 0 (quick: n = 10, K = 10,
inner step 0.1, SGD lr 1e-3, T = 60).

The problems are defined in :mod:`bilevel.problems.iaptt_toy` (re-exported here as ``toy_upper``,
``toy_lower``, ``X_STAR``, ``Y_STAR``, ``F_STAR``, ``INITS``) and :mod:`bilevel.problems.llc`.

Run ``python -m bilevel.app.experiments.synthetic_iaptt --out DIR [--quick]``; writes PNG and CSV files.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import time
import weakref
import warnings
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

import bilevel
from bilevel.problems.iaptt_toy import F_STAR, INITS, X_STAR, Y_STAR
from bilevel.problems.iaptt_toy import lower as toy_lower, upper as toy_upper
from bilevel.problems.llc import llc_problem as _llc_problem

TOY = dict(inner_steps=20, inner_lr=0.002, outer_lr=0.3, outer_optimizer="adam")


# ------------------------------------------------------------------------------------------ problems
def llc_problem(n: int) -> Tuple[Callable, Callable]:
    """Eq. 13 with ``y = (y1, y2)`` stacked in one vector of length 2n: ``(upper, lower)``
    (:func:`bilevel.problems.llc_problem` with ``layout="stacked"``)."""
    return _llc_problem(n, "stacked")


def toy_methods(quick: bool) -> List[str]:
    """Methods compared on the toy: IAPTT-GM, IA-GM, RHG, CG, Neumann and BDA when registered."""
    names = ["iaptt", "iagm", "rhg"] + ([] if quick else ["cg", "neumann"])
    if "bda" in bilevel.METHODS and not quick:
        names.append("bda")
    return names


# ------------------------------------------------------------------------------------------ runs
class _Spy:
    """Wraps an upper objective and remembers the last (x, y) it was called with (detached copies).

    :func:`bilevel.solve` evaluates F at the current x while taking the step's hypergradient and not
    again before the callback, so in the callback ``spy.x`` is that step's x and ``spy.y`` the last
    iterate F was evaluated at (y_K for the unrolled methods).
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.fn = fn
        self.x: torch.Tensor = torch.empty(0)
        self.y: torch.Tensor = torch.empty(0)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.x, self.y = x.detach().clone(), y.detach().clone()
        return self.fn(x, y)


def solve_toy(method: str, x0: float, y0: float, outer_steps: int, **kw: Any) -> Dict[str, Any]:
    """Run :func:`bilevel.solve` on the toy from ``(x0, y0)``.

    Returns
    -------
    dict
        ``x``, ``y``, ``z`` (final x, iterate, learned initialization), ``x_path`` (x at every outer
        step), ``upper`` (F at every step), ``k_bar`` (per step, None for methods without PTT),
        ``seconds`` (wall time of every outer step), ``upper_final``.
    """
    settings = {**TOY, **kw}
    spy = _Spy(toy_upper)
    xs: List[float] = []
    stamps = [time.perf_counter()]

    def callback(t: int, record: Dict[str, Any]) -> None:
        stamps.append(time.perf_counter())
        xs.append(float(spy.x.reshape(-1)[0]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CG/Neumann warn (rightly) on this nonconvex follower
        out = bilevel.solve(spy, toy_lower, torch.tensor([x0], dtype=torch.float64),
                            torch.tensor([y0], dtype=torch.float64), method=method, outer_steps=outer_steps,
                            x_bounds=(1, 10), y_bounds=(-2, 2), callback=callback, **settings)
    hist = out.history
    return {"method": method, "x0": x0, "y0": y0, "x": float(out.x), "y": float(out.y), "z": float(out.y0),
            "x_path": xs + [float(out.x)], "upper": [h["upper"] for h in hist],
            "k_bar": [h.get("k_bar") for h in hist], "seconds": [b - a for a, b in zip(stamps[:-1], stamps[1:])],
            "upper_final": out.info["upper_final"]}


def toy_runs(outer_steps: int, methods: Sequence[str]) -> List[Dict[str, Any]]:
    """Every method from every initialization of Fig. 1."""
    return [solve_toy(m, x0, y0, outer_steps) for m in methods for x0, y0 in INITS]


class _Saved:
    """What the autograd graph holds for one saved tensor while :func:`_tape_bytes` watches: owned by the graph
    alone, so it is freed exactly when the graph lets the saved tensor go."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _tape_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of the distinct storages the autograd tape holds at once while ``fn`` runs.

    Every saved tensor is wrapped in a :class:`_Saved` owned by the graph; a storage counts from the first save
    that references it until the last such wrapper is freed. This depends only on what the graph saves and
    when it is released, not on the allocator reusing addresses.
    """
    refs: Dict[int, int] = {}
    size: Dict[int, int] = {}
    live = [0, 0]  # current, peak

    def release(ptr: int) -> None:
        refs[ptr] -= 1
        if refs[ptr] == 0:
            live[0] -= size.pop(ptr)
            del refs[ptr]

    def pack(t: torch.Tensor) -> _Saved:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in refs:
            refs[ptr] = 0
            size[ptr] = st.nbytes()
            live[0] += size[ptr]
            live[1] = max(live[1], live[0])
        refs[ptr] += 1
        saved = _Saved(t)
        weakref.finalize(saved, release, ptr)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor):
        fn()
    return live[1]


def table1(methods: Sequence[str], dim: int, outer_steps: int, reps: int) -> List[Dict[str, Any]]:
    """Runtime and memory of a whole :func:`bilevel.solve` run on ``dim`` copies of the toy, ratios to RHG.

    Starts at ``(x0, y0) = (7, -1)`` with the toy settings. Time: median over ``reps`` runs
    (``time.perf_counter``). Memory: the peak bytes of distinct storages the autograd tape holds at once
    during the run (:func:`_tape_bytes`; the quantity that grows with K or k_bar), deterministic for a given
    code path. The machine is shared: compare the time ratios of one run.
    """
    x = torch.full((dim,), 7.0, dtype=torch.float64)
    y0 = torch.full((dim,), -1.0, dtype=torch.float64)
    rows = []
    for m in methods:
        def call():
            return bilevel.solve(toy_upper, toy_lower, x, y0, method=m, outer_steps=outer_steps,
                                 x_bounds=(1, 10), y_bounds=(-2, 2), **TOY)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                res = call()
                times.append(time.perf_counter() - t0)
            mem = _tape_bytes(call)
        times.sort()
        kb = [h["k_bar"] for h in res.history if h.get("k_bar") is not None]
        rows.append({"method": m, "seconds": times[len(times) // 2], "tape_bytes": mem,
                     "mean_k_bar": sum(kb) / len(kb) if kb else None})
    ref = next(r for r in rows if r["method"] == "rhg")
    for r in rows:
        r["time_ratio_to_rhg"] = r["seconds"] / ref["seconds"]
        r["memory_ratio_to_rhg"] = r["tape_bytes"] / max(ref["tape_bytes"], 1)
    return rows


def llc_runs(n: int, inner_steps: int, inner_lr: float, outer_steps: int, outer_lr: float
             ) -> Dict[str, Dict[str, List[float]]]:
    """IA-GM vs IA-GM(A) on Eq. 13 (SGD on (x, z), x0 = 0, z0 = 0): per outer step ``||x - e||``,
    ``||y_K - y*||`` and F."""
    upper, lower = llc_problem(n)
    e = torch.ones(n, dtype=torch.float64)
    ystar = torch.cat([e, e])
    out: Dict[str, Dict[str, List[float]]] = {}
    for m in ("iagm", "iagm-a"):
        spy = _Spy(upper)
        curves: Dict[str, List[float]] = {"x_err": [], "y_err": [], "upper": []}

        def callback(t: int, record: Dict[str, Any]) -> None:
            curves["x_err"].append(float(torch.linalg.vector_norm(spy.x - e)))
            curves["y_err"].append(float(torch.linalg.vector_norm(spy.y - ystar)))
            curves["upper"].append(record["upper"])

        bilevel.solve(spy, lower, torch.zeros(n, dtype=torch.float64), torch.zeros(2 * n, dtype=torch.float64),
                      method=m, outer_steps=outer_steps, outer_lr=outer_lr, outer_optimizer="sgd",
                      inner_steps=inner_steps, inner_lr=inner_lr, x_bounds=(-100, 100), callback=callback)
        out[m] = curves
    return out


# ------------------------------------------------------------------------------------------ outputs
def _write_csv(path: pathlib.Path, rows: List[Dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _converged(r: Dict[str, Any], tol: float = 0.15) -> bool:
    return abs(r["x"] - X_STAR) < tol and abs(r["y"] - Y_STAR) < tol


def run(out_dir: pathlib.Path, quick: bool = False) -> Dict[str, Any]:
    """Run the experiments, write PNG + CSV files into ``out_dir`` and return the key numbers.

    Parameters
    ----------
    out_dir : pathlib.Path
        Output folder (created if missing).
    quick : bool
        Smaller budgets (under 30 s): T = 100 on the toy with IAPTT-GM, IA-GM and RHG only, a smaller Table 1 and LLC run.

    Returns
    -------
    dict
        ``toy_final`` (method -> list of final (x, y) per initialization), ``toy_converged`` (method ->
        number of initializations ending within 0.15 of (x*, y*)), ``mean_k_bar``, ``table1`` rows,
        ``llc_final`` (method -> final ||x - x*||, ||y - y*||, F).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bilevel.app.run.plots import figure_legend, line_style

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    T = 100 if quick else 300
    methods = toy_methods(quick)
    runs = toy_runs(T, methods)

    # ---- Fig. 1: x trajectories and relative UL error, final points
    fig, axes = plt.subplots(2, len(INITS), figsize=(4.4 * len(INITS), 7.4), squeeze=False, layout="constrained")
    for j, (x0, y0) in enumerate(INITS):
        for i, m in enumerate(methods):
            for r in (r for r in runs if (r["x0"], r["y0"]) == (x0, y0) and r["method"] == m):
                n = len(r["x_path"])
                axes[0][j].plot([abs(v - X_STAR) / X_STAR for v in r["x_path"]], label=m,
                                **line_style(i, n, len(methods)))
                axes[1][j].plot([abs(v - F_STAR) / abs(F_STAR) for v in r["upper"]], label=m,
                                **line_style(i, n, len(methods)))
        axes[0][j].set_title(f"(x0, y0) = ({x0:g}, {y0:g})")
        axes[0][j].set_ylabel("|x - x*| / |x*|")
        axes[1][j].set_ylabel("|F - F*| / |F*|")
        axes[1][j].set_xlabel("outer iteration")
        for ax in axes[:, j]:
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.grid(True, alpha=0.3)
    figure_legend(fig, list(axes.ravel()))
    fig.suptitle(f"IAPTT-GM Fig. 1: toy Eq. 10 from three initializations (K={TOY['inner_steps']}, "
                 f"x* = 11 pi/4)", fontsize=12)
    fig.savefig(out_dir / "iaptt_fig1_toy.png", dpi=110)
    plt.close(fig)
    _write_csv(out_dir / "iaptt_fig1_final.csv",
               [{k: r[k] for k in ("method", "x0", "y0", "x", "y", "z", "upper_final")} for r in runs])

    # ---- Fig. 2: running mean of k_bar and cumulative seconds (IAPTT-GM vs IA-GM)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    mean_k_bar = {}
    for j, (x0, y0) in enumerate(INITS):  # colour: the initialization; solid: IAPTT-GM, dashed: IA-GM
        for r in (r for r in runs if (r["x0"], r["y0"]) == (x0, y0)):
            if r["method"] not in ("iaptt", "iagm"):
                continue
            style = line_style(j, len(r["seconds"]), len(INITS))
            style["linestyle"] = "-" if r["method"] == "iaptt" else "--"
            label = f"{'IAPTT-GM' if r['method'] == 'iaptt' else 'IA-GM'} from ({x0:g}, {y0:g})"
            if r["method"] == "iaptt":
                kb = r["k_bar"]
                avg = [sum(kb[: i + 1]) / (i + 1) for i in range(len(kb))]
                mean_k_bar[f"{x0:g},{y0:g}"] = avg[-1]
                axes[0].plot(avg, label=label, **style)
            # cumulative time (single steps take milliseconds and jitter by 2-3x on a shared machine), without
            # the first step, which includes one-off warm-up costs of whichever run comes first
            secs = r["seconds"][1:]
            axes[1].plot(range(1, len(secs) + 1), list(itertools.accumulate(secs)), label=label, **style)
    axes[0].axhline(TOY["inner_steps"], color="k", ls=":", label="K (IA-GM: k_bar = K)")
    axes[0].set_title("IAPTT-GM: running mean of k_bar")
    axes[0].set_xlabel("outer iteration")
    axes[1].set_title("cumulative seconds of outer steps 2, 3, ...")
    axes[1].set_xlabel("outer iteration")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    figure_legend(fig, axes, ncol=4)
    fig.suptitle("IAPTT-GM Fig. 2: truncation k_bar and cost per step on toy Eq. 10", fontsize=12)
    fig.savefig(out_dir / "iaptt_fig2_kbar.png", dpi=110)
    plt.close(fig)
    _write_csv(out_dir / "iaptt_fig2_kbar.csv",
               [{"method": r["method"], "x0": r["x0"], "y0": r["y0"], "step": t, "k_bar": r["k_bar"][t],
                 "seconds": r["seconds"][t]} for r in runs if r["method"] in ("iaptt", "iagm")
                for t in range(len(r["seconds"]))])

    # ---- Table 1: runtime and memory ratios to RHG
    t1_methods = ["rhg", "iaptt", "iagm"] + ([] if quick else ["cg", "neumann"] + (
        ["bda"] if "bda" in bilevel.METHODS else []))
    rows = table1(t1_methods, dim=1000, outer_steps=10 if quick else 100, reps=1 if quick else 3)
    _write_csv(out_dir / "iaptt_table1.csv", rows)

    # ---- Fig. 3 (left): LLC problem, IA-GM vs IA-GM(A)
    if quick:
        llc = llc_runs(n=10, inner_steps=10, inner_lr=0.1, outer_steps=60, outer_lr=1e-3)
    else:
        llc = llc_runs(n=50, inner_steps=20, inner_lr=0.05, outer_steps=200, outer_lr=3e-4)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    for i, (m, c) in enumerate(llc.items()):
        axes[0].plot(c["y_err"], label=m, **line_style(i, len(c["y_err"]), len(llc)))
        axes[1].plot(c["x_err"], label=m, **line_style(i, len(c["x_err"]), len(llc)))
    axes[0].set_title("||y - y*||")
    axes[1].set_title("||x - x*||")
    for ax in axes:
        ax.set_xlabel("outer iteration")
        lines = [v for line in ax.get_lines() for v in line.get_ydata()]
        if lines and min(lines) > 0 and max(lines) > 20 * min(lines):  # log only over a wide range
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    figure_legend(fig, axes)
    steps = len(next(iter(llc.values()))["x_err"]) if llc else 0
    fig.suptitle(f"IAPTT-GM Fig. 3: LLC problem Eq. 13 (n = {10 if quick else 50}, {steps} outer steps), "
                 "IA-GM vs IA-GM(A)", fontsize=12)
    fig.savefig(out_dir / "iaptt_fig3_llc.png", dpi=110)
    plt.close(fig)
    _write_csv(out_dir / "iaptt_fig3_llc.csv",
               [{"method": m, "step": t, "x_err": c["x_err"][t], "y_err": c["y_err"][t], "upper": c["upper"][t]}
                for m, c in llc.items() for t in range(len(c["upper"]))])

    summary = {
        "outer_steps": T,
        "toy_final": {m: [(round(r["x"], 4), round(r["y"], 4)) for r in runs if r["method"] == m] for m in methods},
        "toy_converged": {m: sum(_converged(r) for r in runs if r["method"] == m) for m in methods},
        "mean_k_bar": mean_k_bar,
        "table1": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "llc_final": {m: {"x_err": c["x_err"][-1], "y_err": c["y_err"][-1], "upper": c["upper"][-1]}
                      for m, c in llc.items()},
    }
    (out_dir / "iaptt_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    """Command line: ``python -m bilevel.app.experiments.synthetic_iaptt --out DIR [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder for PNG/CSV files")
    parser.add_argument("--quick", action="store_true", help="small budgets (< 30 s)")
    args = parser.parse_args()
    summary = run(args.out, quick=args.quick)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
