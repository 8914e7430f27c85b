"""``bilevel reproduce``: run the papers' experiments and write the results next to the published numbers.

::

    bilevel reproduce                                  # every experiment, --scale cpu, 3 seeds
    bilevel reproduce bda-table2 fewshot --scale smoke --seeds 1

For each experiment this writes ``<out>/<experiment>.csv`` (columns ``experiment, dataset, setting, method,
seed, metric, value``; one row per method x setting x seed x metric, metric names as in the runs'
``summary.json``), ``<out>/<experiment>.json`` (scale, seeds, wall time, settings) and its figure, keeps every
run under ``<out>/runs/<experiment>/`` (resumable: finished runs are read back, interrupted ones continue from
their checkpoints) and then regenerates the report (``REPRODUCTION.md``) from all the CSVs present.

Scales: ``smoke`` (seconds; what the tests run), ``cpu`` (each experiment within 45 minutes on 2 cores with
``--jobs 2``, as faithful to the papers' protocol as that allows), ``paper`` (the papers' settings where they are
stated, for users with time or a GPU).

The committed results (``results/reproduce/`` and ``REPRODUCTION.md``) are ``cpu`` runs. ``<out>`` defaults to
``results/reproduce`` for ``--scale cpu`` and to ``results/reproduce-<scale>`` otherwise, and the report to
``REPRODUCTION.md`` for ``results/reproduce`` and to ``<out>/REPRODUCTION.md`` otherwise. Writing into a directory
holding results of another scale, or replacing a report of other scales, is refused (:class:`ScaleConflictError`)
unless ``overwrite=True`` (``--overwrite``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

from bilevel.app.device import check_device, device_name, resolve_device
from bilevel.app.reproduce import bda_table2, bvfim_fig2, fewshot, iaptt_table3, improved_table1, synthetic
from bilevel.app.reproduce import bvfim_fig3, fewshot_baselines, improved_hyperrep
from bilevel.app.reproduce.common import (SCALES, Context, ScaleConflictError, check_out_dir, check_scale, check_seeds, default_out_dir,
                     default_report, read_rows, recorded_scales, write_rows)
from bilevel.app.reproduce.report import check_report, write_report

#: experiment name -> module (``run(ctx) -> rows``, ``report(rows, meta) -> str``, ``TITLE``)
EXPERIMENTS: Dict[str, ModuleType] = {m.NAME: m for m in (iaptt_table3, improved_table1, bda_table2, bvfim_fig2,
                                                          fewshot, synthetic)}
EXPERIMENTS.update({m.NAME: m for m in (bvfim_fig3, improved_hyperrep, fewshot_baselines)})

__all__ = ["EXPERIMENTS", "SCALES", "ScaleConflictError", "default_out_dir", "default_report", "reproduce",
           "run_experiment", "write_report"]


def register(module: ModuleType) -> ModuleType:
    """Add an experiment module (``NAME``, ``TITLE``, ``run``, ``report``); the name must be new."""
    for attr in ("NAME", "TITLE", "run", "report"):
        if not hasattr(module, attr):
            raise ValueError(f"experiment module {module.__name__} has no {attr}")
    if module.NAME in EXPERIMENTS:
        raise ValueError(f"an experiment named {module.NAME!r} is already registered")
    EXPERIMENTS[module.NAME] = module
    return module


def check_names(names: Sequence[str]) -> List[str]:
    """The experiment names (all when empty); a ValueError names the valid ones for an unknown name."""
    if not names:
        return list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(map(repr, unknown))}; valid experiments are: "
                         f"{', '.join(EXPERIMENTS)}")
    return list(dict.fromkeys(names))


def run_experiment(name: str, *, scale: str = "cpu", seeds: int = 3, out_dir: Any = None,
                   jobs: int = 1, progress: bool = True, data_root: Optional[str] = None,
                   overwrite: bool = False, device: str = "auto") -> List[Dict[str, Any]]:
    """Run one experiment and write its CSV and metadata; returns the rows.

    Parameters
    ----------
    name : str
        An experiment of :data:`EXPERIMENTS`.
    scale : {"smoke", "cpu", "paper"}
    seeds : int
        Seeds 0 .. seeds-1 (>= 1).
    out_dir : str or Path, optional
        Default: :func:`default_out_dir` of ``scale``.
    jobs : int
        Parallel run processes (one torch thread each; on cuda they share the GPU).
    progress : bool
    data_root : str, optional
        Directory searched first for data files (e.g. MNIST IDX files, Omniglot).
    overwrite : bool
        Write even if ``out_dir`` holds results of another scale (else :class:`ScaleConflictError`).
    device : str
        ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``: the device of every run (resolved by each run; the
        experiment's ``<name>.json`` records it resolved, ``cpu`` or ``cuda:N``).
    """
    module = EXPERIMENTS[check_names([name])[0]]
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(scale)
    ctx = Context(scale=check_scale(scale), seeds=check_seeds(seeds), out_dir=out_dir, workers=jobs,
                  progress=progress, data_root=data_root, device=check_device(device))
    resolved = device_name(resolve_device(ctx.device))  # cuda without CUDA: a ValueError before any run
    check_out_dir(ctx.out_dir, scale, EXPERIMENTS, overwrite)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = module.run(ctx)
    seconds = time.perf_counter() - start
    write_rows(ctx.out_dir / f"{module.NAME}.csv", rows)
    figure = ctx.out_dir / f"{module.NAME}.png"
    meta = {"experiment": module.NAME, "title": module.TITLE, "scale": scale, "seeds": seeds, "jobs": jobs,
            "device": resolved,
            "seconds": round(seconds, 1), "run_seconds": round(ctx.run_seconds, 1), "settings": _plain(getattr(module, "SETTINGS", {}).get(scale, {})),
            "figure": figure.name if figure.exists() else None,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **_plain(ctx.meta)}
    (ctx.out_dir / f"{module.NAME}.json").write_text(json.dumps(meta, indent=1))
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def reproduce(names: Sequence[str] = (), *, scale: str = "cpu", seeds: int = 3, out_dir: Any = None,
              report: Any = None, jobs: int = 1, progress: bool = True,
              data_root: Optional[str] = None, overwrite: bool = False, device: str = "auto") -> Path:
    """Run the experiments (all when ``names`` is empty), then regenerate the report; returns its path.

    ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) goes to every run (:func:`run_experiment`).

    ``out_dir`` defaults to :func:`default_out_dir` of ``scale``, ``report`` to :func:`default_report` of
    ``out_dir``. Unless ``overwrite``, both are checked before anything runs: results of another scale in
    ``out_dir``, or a report of other scales at ``report``, raise :class:`ScaleConflictError`.
    """
    check_scale(scale)
    check_seeds(seeds)
    device = check_device(device)
    names = check_names(names)
    out = Path(out_dir) if out_dir is not None else default_out_dir(scale)
    path = Path(report) if report is not None else default_report(out)
    check_out_dir(out, scale, EXPERIMENTS, overwrite)
    after = dict(recorded_scales(out, EXPERIMENTS), **{name: scale for name in names})
    check_report(path, sorted(set(after.values())), overwrite)
    for name in names:
        run_experiment(name, scale=scale, seeds=seeds, out_dir=out, jobs=jobs, progress=progress,
                       data_root=data_root, overwrite=True, device=device)
    return write_report(out, path, EXPERIMENTS, overwrite=True)
