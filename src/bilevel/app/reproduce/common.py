"""Shared machinery of ``bilevel reproduce``: the run grid, the result rows, the paper's numbers, statistics.

A reproduction experiment is a grid of task runs (:class:`Job`: one method x setting x seed, a
:func:`bilevel.app.run.runner.run_task` configuration) followed by a table. :func:`run_grid` runs the grid with
``jobs`` worker processes (one torch thread each) and is resumable: a job whose directory holds a
``summary.json`` of the same configuration is read back, a job with checkpoints continues from the newest one
(:func:`bilevel.app.run.runner.resume_run`), any other job starts afresh. So a killed ``bilevel reproduce`` loses at most
the outer steps since each run's last checkpoint.

Result rows have the columns of :data:`COLUMNS` (``experiment, dataset, setting, method, seed, metric,
value``); metric names are those of the runs' ``summary.json``.

Devices: every run of a grid gets the grid's ``device`` (``bilevel reproduce --device``; each run resolves it, and
its summary.json records where it ran). A finished run is read back whatever device it ran on (the device is no
part of the comparison of configurations, like ``threads``); an interrupted one continues from its checkpoint on
the grid's device. On cuda the ``workers`` processes share the GPU (each holds a CUDA context of its own, a few
hundred MB; the runs are small, so several fit) and each keeps one CPU thread.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import json
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: columns of ``results/reproduce/<experiment>.csv``
COLUMNS = ("experiment", "dataset", "setting", "method", "seed", "metric", "value")

#: the scales of ``bilevel reproduce --scale``
SCALES = ("smoke", "cpu", "paper")

#: the scale of the results committed under :data:`COMMITTED_OUT_DIR` and of :data:`COMMITTED_REPORT`
COMMITTED_SCALE = "cpu"
#: default output directory of :data:`COMMITTED_SCALE` runs (relative to the working directory)
COMMITTED_OUT_DIR = Path("results/reproduce")
#: default report of the results in :data:`COMMITTED_OUT_DIR`
COMMITTED_REPORT = Path("REPRODUCTION.md")

#: file a diverged run leaves in its directory (its metrics are NaN in the CSV)
DIVERGED_FILE = "diverged.json"

#: the papers' numbers used by the report (rows copied from the reference table of the four papers)
PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")


def check_scale(scale: Any) -> str:
    """``scale`` if it is one of :data:`SCALES`, else a ValueError naming them."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales are: {', '.join(SCALES)}")
    return scale


def default_out_dir(scale: str) -> Path:
    """Default output directory of a scale: :data:`COMMITTED_OUT_DIR` for :data:`COMMITTED_SCALE`, else
    ``results/reproduce-<scale>``, so runs at another scale never land on the committed results."""
    check_scale(scale)
    return COMMITTED_OUT_DIR if scale == COMMITTED_SCALE else Path(f"{COMMITTED_OUT_DIR}-{scale}")


def default_report(out_dir: Any) -> Path:
    """Default report of an output directory: :data:`COMMITTED_REPORT` for :data:`COMMITTED_OUT_DIR`, else
    ``<out_dir>/REPRODUCTION.md``."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == COMMITTED_OUT_DIR.resolve():
        return COMMITTED_REPORT
    return out_dir / "REPRODUCTION.md"


class ScaleConflictError(ValueError):
    """Raised instead of writing over results (or a report) of another scale without ``overwrite``."""


def recorded_scales(out_dir: Any, names: Iterable[str]) -> Dict[str, str]:
    """Experiment -> scale recorded in ``<out_dir>/<experiment>.json``, for each of ``names`` that has a CSV or a
    metadata file there (``"unknown"`` when the metadata is missing or unreadable)."""
    out_dir = Path(out_dir)
    found: Dict[str, str] = {}
    for name in names:
        meta_path, csv_path = out_dir / f"{name}.json", out_dir / f"{name}.csv"
        if not (meta_path.exists() or csv_path.exists()):
            continue
        try:
            found[name] = str(json.loads(meta_path.read_text()).get("scale", "unknown"))
        except (OSError, ValueError, AttributeError):
            found[name] = "unknown"
    return found


def check_out_dir(out_dir: Any, scale: str, names: Iterable[str], overwrite: bool = False) -> None:
    """Refuse (:class:`ScaleConflictError`) to write ``scale`` results into a directory that holds results of
    another scale for any of ``names``, unless ``overwrite``."""
    if overwrite:
        return
    other = {n: s for n, s in recorded_scales(out_dir, names).items() if s != scale}
    if other:
        held = ", ".join(f"{n} ({s})" for n, s in sorted(other.items()))
        raise ScaleConflictError(
            f"{out_dir} holds results of another scale than --scale {scale}: {held}; refusing to overwrite or mix "
            f"them. Write elsewhere with --out DIR (the default for --scale {scale} is {default_out_dir(scale)}), "
            "or pass --overwrite to replace them.")


def check_seeds(seeds: Any) -> int:
    """``seeds`` if it is an int >= 1, else a ValueError."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    return seeds


@dataclass
class Job:
    """One run of a grid.

    Attributes
    ----------
    dataset, setting, method : str
        The row labels (``method`` is the label shown in tables, e.g. ``"T-RHG"``).
    seed : int
    task : str
        Task name for :func:`bilevel.app.run.runner.run_task`.
    config : dict
        The run's configuration (``seed`` included).
    metrics : sequence of str
        Keys of the run's summary that become rows.
    """

    dataset: str
    setting: str
    method: str
    seed: int
    task: str
    config: Dict[str, Any]
    metrics: Sequence[str] = ("test_accuracy", "f1")
    extra: Dict[str, Any] = field(default_factory=dict)
    variant: str = ""

    @property
    def name(self) -> str:
        """Directory name of the run (unique within an experiment; a tuning ``variant`` adds a level)."""
        parts = (self.dataset, self.setting, self.method) + ((self.variant,) if self.variant else ()) + (
            f"seed{self.seed}",)
        return "/".join(_slug(p) for p in parts)


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "-_.=" else "_" for c in str(text)]
    return "".join(keep).strip("_") or "_"


#: configuration keys that do not tell runs apart: a run made with other threads or on another device is the same run
NOT_COMPARED = ("threads", "device")


def _same_config(run_dir: Path, config: Mapping[str, Any]) -> bool:
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        return False
    saved = yaml.safe_load(path.read_text()) or {}
    return all(_plain(saved.get(k)) == _plain(v) for k, v in config.items() if k not in NOT_COMPARED)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run_one(task: str, config: Mapping[str, Any], out_dir: str) -> Dict[str, Any]:
    """Run (or read back, or resume) one job; returns its summary. Top-level so worker processes can call it.

    The runs' warnings (inner loop far from stationarity, CG not converged, ...) stay in their
    ``metrics.jsonl``; they are not echoed to the terminal, where many parallel runs would drown the progress.
    """
    log = logging.getLogger("bilevel")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return _run_one(task, config, out_dir)
    finally:
        log.setLevel(level)


def _run_one(task: str, config: Mapping[str, Any], out_dir: str) -> Dict[str, Any]:
    import torch

    from bilevel.app.run import checkpoint as ckpt
    from bilevel.app.run.guards import DivergenceError
    from bilevel.app.run.runner import SUMMARY_FILE, resume_run, run_task

    torch.set_num_threads(int(config.get("threads") or 1))
    out = Path(out_dir)
    if (out / DIVERGED_FILE).exists() and _same_config(out, config):
        return json.loads((out / DIVERGED_FILE).read_text())
    if (out / SUMMARY_FILE).exists() and _same_config(out, config):
        return json.loads((out / SUMMARY_FILE).read_text())
    if ckpt.list_checkpoints(out) and _same_config(out, config):
        try:  # on this grid's device, whichever device the run started on
            return resume_run(out, quiet=True, device=config.get("device"))
        except ValueError:  # unusable checkpoints: start over
            pass
    try:
        return run_task(task, dict(config), out, quiet=True, overwrite=True, checkpoint_every=25)
    except DivergenceError as err:  # recorded, not fatal: the report shows the method as diverged
        summary = {"diverged": str(err), "diverged_step": err.step}
        (out / DIVERGED_FILE).write_text(json.dumps(summary))
        return summary


def run_grid(jobs: Sequence[Job], out_dir: Path, *, workers: int = 1, progress: bool = True,
             label: str = "", device: str = "auto") -> List[Tuple[Job, Dict[str, Any]]]:
    """Run every job (in ``workers`` processes) and return ``(job, summary)`` pairs in the jobs' order.

    Parameters
    ----------
    jobs : sequence of Job
    out_dir : Path
        Run directories are ``out_dir / job.name``.
    workers : int
        Parallel processes (>= 1); each run uses one torch thread (on cuda the processes share the GPU).
    progress : bool
        Show a progress bar over the runs.
    label : str
        Progress bar label.
    device : str
        ``device`` of every run (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``), unless a job's configuration sets
        its own.
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {workers!r}")
    results: Dict[int, Dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc=label or "runs", disable=not progress, unit="run")
    try:
        if workers == 1:
            for i, job in enumerate(jobs):
                results[i] = run_one(job.task, _job_config(job, device), str(out_dir / job.name))
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(run_one, job.task, _job_config(job, device), str(out_dir / job.name)): i
                           for i, job in enumerate(jobs)}
                for fut in cf.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    finally:
        bar.close()
    return [(job, results[i]) for i, job in enumerate(jobs)]


def _job_config(job: Job, device: str) -> Dict[str, Any]:
    """The configuration a grid runs a job with: one torch thread, the grid's device (unless the job sets one)."""
    return {"device": device, **job.config, "threads": 1}


def rows_from(experiment: str, pairs: Iterable[Tuple[Job, Mapping[str, Any]]]) -> List[Dict[str, Any]]:
    """Result rows: one per job and metric in ``job.metrics`` (NaN for a diverged run; a metric missing from a
    finished run's summary raises KeyError)."""
    rows = []
    for job, summary in pairs:
        for metric in job.metrics:
            value = float("nan") if "diverged" in summary else summary[metric]
            rows.append(row(experiment, job.dataset, job.setting, job.method, job.seed, metric, value))
    return rows


def row(experiment: str, dataset: str, setting: str, method: str, seed: int, metric: str,
        value: Any) -> Dict[str, Any]:
    """One result row (value as float)."""
    return {"experiment": experiment, "dataset": dataset, "setting": setting, "method": method, "seed": int(seed),
            "metric": metric, "value": float(value)}


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write rows to a CSV with the :data:`COLUMNS` header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(r[k]) if k == "value" else r[k]) for k in COLUMNS})
    tmp.replace(path)


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """Read a result CSV back (seed as int, value as float); a ValueError if the header is not :data:`COLUMNS`."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the columns {', '.join(COLUMNS)}, found {reader.fieldnames}")
        return [dict(r, seed=int(r["seed"]), value=float(r["value"])) for r in reader]


# ------------------------------------------------------------------------------------------ statistics
def mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def select(rows: Sequence[Mapping[str, Any]], **match: Any) -> List[float]:
    """Values of the rows whose fields equal ``match``."""
    return [r["value"] for r in rows if all(r[k] == v for k, v in match.items())]


def stat(rows: Sequence[Mapping[str, Any]], scale: float = 1.0, **match: Any) -> Optional[Tuple[float, float, int]]:
    """``mean_std`` of the matching values times ``scale``; None when nothing matches."""
    vals = select(rows, **match)
    if not vals:
        return None
    m, s, n = mean_std(vals)
    return m * scale, s * scale, n


def fmt_stat(st: Optional[Tuple[float, float, int]], digits: int = 2) -> str:
    """``mean ± std`` (or ``-`` when missing)."""
    if st is None or not math.isfinite(st[0]):
        return "-"
    return f"{st[0]:.{digits}f} ± {st[1]:.{digits}f}"


# ------------------------------------------------------------------------------------------ paper numbers
def paper_rows() -> List[Dict[str, str]]:
    """The copied rows of the papers' tables (:data:`PAPER_RESULTS`)."""
    with open(PAPER_RESULTS, newline="") as fh:
        return list(csv.DictReader(fh))


def paper_value(refs: Sequence[Mapping[str, str]], **match: str) -> Optional[float]:
    """The paper's number for the row whose fields equal ``match`` (exactly one must match, else None)."""
    hits = [r for r in refs if all(r.get(k) == v for k, v in match.items())]
    if len(hits) != 1:
        return None
    return float(hits[0]["value"])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def deviation(ours: Optional[Tuple[float, float, int]], paper: Optional[float], digits: int = 2) -> str:
    """``ours - paper`` as text (``-`` when either is missing)."""
    if ours is None or paper is None or not math.isfinite(ours[0]):
        return "-"
    return f"{ours[0] - paper:+.{digits}f}"


@dataclass
class Context:
    """What an experiment's ``run`` gets: scale, seeds, output directory, worker count, progress flag, device."""

    scale: str
    seeds: int
    out_dir: Path
    workers: int = 1
    progress: bool = True
    data_root: Optional[str] = None
    #: ``device`` of every run (``bilevel reproduce --device``)
    device: str = "auto"
    started: float = field(default_factory=time.perf_counter)

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"

    run_seconds: float = 0.0
    #: what the experiment adds to its ``<experiment>.json`` (e.g. ``"tuning"``: :func:`tune`'s record)
    meta: Dict[str, Any] = field(default_factory=dict)
    _counted: set = field(default_factory=set, repr=False)

    def grid(self, experiment: str, jobs: Sequence[Job]) -> List[Tuple[Job, Dict[str, Any]]]:
        """:func:`run_grid` of the jobs under ``runs/<experiment>/``; adds the runs' own wall times (also of runs
        read back from an earlier invocation) to :attr:`run_seconds`."""
        pairs = run_grid(jobs, self.runs_dir / experiment, workers=self.workers, progress=self.progress,
                         label=experiment, device=self.device)
        for job, s in pairs:  # a run read back again (a tuned seed-0 run among the finals) counts once
            key = f"{experiment}/{job.name}"
            if key not in self._counted:
                self._counted.add(key)
                self.run_seconds += float(s.get("wall_seconds", 0.0))
        return pairs


#: type of an experiment's run function
RunFn = Callable[[Context], List[Dict[str, Any]]]


# ------------------------------------------------------------------------------------------ fair tuning
@dataclass(frozen=True)
class Grid:
    """A method's tuning grid: one setting the papers leave open and the values tried.

    ``knob`` is a runner key of the run's configuration (``init_lr``, ``outer_lr``, ...) when the configuration
    has it, else a method option (``truncate``, ``cg_steps``, ...). ``path`` reaches into a nested option
    (``("alpha", "c")``: the constant of a schedule dict). ``also`` names further method options set to the same
    value (BVFIM's weights ``mu1 = theta = tau``: one knob, the budget of one grid).
    """

    knob: str
    values: Tuple[Any, ...]
    path: Tuple[str, ...] = ()
    also: Tuple[str, ...] = ()

    def apply(self, config: Mapping[str, Any], value: Any) -> Dict[str, Any]:
        """A copy of ``config`` with the knob (and every option of ``also``) set to ``value``."""
        out = copy.deepcopy(dict(config))
        if not self.path and self.knob in out and self.knob != "method_options":
            out[self.knob] = value
        else:
            target = out.setdefault("method_options", {})
            keys = self.path or (self.knob,)
            for k in keys[:-1]:
                target = target.setdefault(k, {})
            target[keys[-1]] = value
        for key in self.also:
            out.setdefault("method_options", {})[key] = value
        return out

    def label(self, value: Any) -> str:
        return f"{self.knob}={value}"

    def at(self, job: Job, value: Any) -> Job:
        """``job`` with the knob set to ``value``: its own run directory (``variant``) and the value in
        ``extra["tuned"]``."""
        return replace(job, config=self.apply(job.config, value), variant=self.label(value),
                       extra=dict(job.extra, tuned={self.knob: value}))

    def variants(self, job: Job) -> List[Job]:
        """``job`` at every value of the grid."""
        return [self.at(job, v) for v in self.values]


def around(value: float) -> Tuple[float, float, float]:
    """A three-point grid centred on ``value``: ``value / 3, value, 3 value`` (the ends with 4 significant
    digits)."""
    return float(f"{value / 3:.4g}"), value, float(f"{value * 3:.4g}")


def check_grids(grids: Mapping[str, Grid]) -> int:
    """The common grid size; a ValueError when the methods' grids differ in size (the budget must be equal)."""
    sizes = {label: len(g.values) for label, g in grids.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every method must get the same tuning budget; grid sizes differ: {sizes}")
    return next(iter(sizes.values()), 0)


def tune(ctx: "Context", experiment: str, base: Mapping[str, Job], grids: Mapping[str, Grid], seeds: int,
         score: str = "selected_value", expand: Optional[Callable[[str, Job], List[Job]]] = None,
         maximize: bool = False) -> List[Tuple[Job, Dict[str, Any]]]:
    """Tune each method on its grid (seed 0), then run the final jobs at the chosen value.

    Every method gets a grid of the same size (:func:`check_grids`). The grid runs are ``base``'s jobs (seed 0)
    with one grid value each; the value whose run has the smallest (``maximize``: largest) ``score`` in its
    summary (by default ``selected_value``: the best held-out validation value the run reached, see
    ``select_metric``) is chosen -- never a test metric. A diverged grid run scores worst. The final jobs (``expand(label, chosen_job)``; by
    default the chosen job at seeds 0 .. seeds-1) run next; a final job identical to a grid run (same directory
    and configuration) is read back, not run again. The grid, the scores and the choices are recorded in
    ``ctx.meta["tuning"]``.

    Parameters
    ----------
    ctx : Context
    experiment : str
    base : mapping label -> Job
        Each method's seed-0 tuning job at its default settings.
    grids : mapping label -> Grid
        Every label of ``base`` needs one.
    seeds : int
    score : str
        Summary entry to minimize (``maximize``: to maximize, e.g. a validation accuracy).
    expand : callable, optional
        ``(label, chosen job) -> final jobs`` (e.g. every setting of a table at the chosen value).

    Returns
    -------
    list of (Job, summary)
        The final jobs and their summaries, in the order of ``base`` then ``expand``.
    """
    missing = [label for label in base if label not in grids]
    if missing:
        raise ValueError(f"no tuning grid for {', '.join(missing)}")
    check_grids({label: grids[label] for label in base})
    tried = ctx.grid(experiment, [j for label, job in base.items() for j in grids[label].variants(job)])
    record: Dict[str, Any] = {}
    finals: List[Job] = []
    for label in base:
        g = grids[label]
        runs = [(job, summary) for job, summary in tried if job.method == label]
        scores = [_score(summary, score, maximize) for _, summary in runs]
        best = int(np.argmax(scores) if maximize else np.argmin(scores))
        record[label] = {"knob": g.knob, "grid": list(g.values), "chosen": g.values[best],
                         "scores": [v if math.isfinite(v) else None for v in scores],
                         "score": score, "mode": "max" if maximize else "min", "seed": 0,
                         "setting": base[label].setting,
                         "selected_steps": [summary.get("selected_step") for _, summary in runs]}
        chosen = runs[best][0]
        finals.extend(expand(label, chosen) if expand is not None else
                      [replace(chosen, seed=seed, config=dict(chosen.config, seed=seed)) for seed in range(seeds)])
    ctx.meta.setdefault("tuning", {}).update(record)
    return ctx.grid(experiment, finals)


def tuning_table(tuning: Mapping[str, Any], labels: Sequence[str], intro: str, score: str = "held-out loss") -> str:
    """:func:`tune`'s record as a Markdown table (method, setting, every grid value with its score, the choice),
    after ``intro``; empty when nothing was tuned."""
    body = []
    for label in labels:
        t = tuning.get(label)
        if not t:
            continue
        scores = ", ".join(f"{v}: {'diverged' if sc is None else f'{sc:.4f}'}"
                           for v, sc in zip(t["grid"], t["scores"]))
        body.append([label, t["knob"], scores, t["chosen"]])
    if not body:
        return ""
    return intro + "\n\n" + markdown_table(["method", "setting", f"grid: {score}", "chosen"], body)


def _score(summary: Mapping[str, Any], key: str, maximize: bool = False) -> float:
    """The run's score; a diverged or non-finite run gets the worst one (+inf, or -inf when maximizing)."""
    worst = -math.inf if maximize else math.inf
    if "diverged" in summary:
        return worst
    v = float(summary.get(key, math.nan))
    return v if math.isfinite(v) else worst
