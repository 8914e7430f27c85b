"""The run directory of ``bilevel run``: its files, its checks, its lock, and reading a run back.

A run directory holds ``config.yaml``, ``run_options.yaml``, ``metrics.jsonl``, ``summary.json`` (written last:
it marks a finished run), ``curves.png``, ``checkpoints/`` and the lock files ``.lock`` / ``.lock.pid``. Locking,
cleaning up and logging happen in the writing process only (rank 0 of a multi-process run, :func:`is_writer`; the
other ranks write into a scratch directory). The cost of every function here is that of the files it touches.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import torch

from bilevel.app import config as cfg
from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run import plots

#: files of a run directory
CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE = "config.yaml", "metrics.jsonl", "summary.json", "curves.png"

#: run-control settings of a run directory (not part of config.yaml; read back by a resume)
RUN_OPTIONS_FILE = "run_options.yaml"

#: the log of runs (warnings of the guards, resume messages); docs/long_runs.md names it
LOGGER = "bilevel.app.run.runner"

logger = logging.getLogger(LOGGER)


def is_writer() -> bool:
    """True unless torch.distributed is initialized and this process is not rank 0."""
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


def warn(message: str) -> None:
    """Log a warning of the run (rank 0 only)."""
    if is_writer():
        logger.warning(message)


@contextlib.contextmanager
def writing(path: Any) -> Iterator[None]:
    """Name ``path`` in an OSError raised without a file name inside the block.

    ``write`` / ``flush`` / ``fsync`` on an open file (e.g. ENOSPC, "No space left on device") raise OSErrors
    that do not say which file; ``bilevel run`` prints the path it gets here.
    """
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


# ------------------------------------------------------------------------------------------ a new run
def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, or a directory holding a run (unless ``overwrite``).

    Raises
    ------
    ValueError
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} exists and is not a directory")
    existing = [n for n in (METRICS_FILE, SUMMARY_FILE) if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"output directory {str(out)!r} already holds a run ({', '.join(existing)}); "
                         "choose another --out or pass --overwrite")


def start_fresh(out: Path, config: Mapping[str, Any], run_options: Mapping[str, Any]) -> None:
    """Delete an older run's metrics, summary, curves and checkpoints, then write config.yaml and run_options.yaml.

    Call it holding the directory's lock.
    """
    for name in (METRICS_FILE, SUMMARY_FILE, CURVES_FILE):  # leave no stale files of an older run
        if (out / name).exists():
            (out / name).unlink()
    for old in ckpt.list_checkpoints(out):  # nor checkpoints of an older run
        old.unlink()
    cfg.dump_yaml(config, out / CONFIG_FILE)
    cfg.dump_yaml(run_options, out / RUN_OPTIONS_FILE)


def remove_stale_temp_files(out: Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left (rank 0, holding the lock)."""
    if not is_writer():
        return
    for directory in (out, out / ckpt.CHECKPOINT_DIR):
        for stale in ckpt.remove_stale_temp_files(directory):
            logger.info("removed the stale temporary file %s (left by a killed process)", stale)


class DirLock:
    """The lock of one run directory as a run holds it: taken by the writing process only, released once.

    Wraps :class:`bilevel.app.run.checkpoint.RunLock` (an OS file lock on ``DIR/.lock``, released by the OS
    when the holder dies, also on ``kill -9``).
    """

    def __init__(self) -> None:
        self._lock: Optional[ckpt.RunLock] = None

    def hold(self, out: Path) -> None:
        """Take the lock of ``out`` unless held already (rank 0 only).

        Raises
        ------
        bilevel.app.run.checkpoint.RunLockedError
            Another process holds it (the message names its PID).
        """
        if self._lock is None and is_writer():
            self._lock = ckpt.RunLock(out).acquire()

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()


# ------------------------------------------------------------------------------------------ the results
def curves_title(task: str, config: Mapping[str, Any], steps: Any) -> str:
    """Title of curves.png."""
    return f"{task}: {config['method']} (K={config['inner_steps']}, T={steps})"


def write_results(out: Path, records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], title: str) -> None:
    """Draw ``curves.png``, then write ``summary.json`` atomically (it marks a finished run)."""
    with writing(out / CURVES_FILE):
        plots.plot_curves(records, out / CURVES_FILE, title=title)
    with writing(out / SUMMARY_FILE):
        ckpt.atomic_write_bytes(out / SUMMARY_FILE, (json.dumps(summary, indent=1) + "\n").encode())


def write_missing_curves(d: Path, summary: Mapping[str, Any], lock: bool) -> None:
    """Draw ``d/curves.png`` from metrics.jsonl when a finished run lacks it (rank 0; ``lock``: take DIR's lock)."""
    if (d / CURVES_FILE).exists() or not is_writer():
        return
    with (ckpt.RunLock(d) if lock else contextlib.nullcontext()):
        if (d / CURVES_FILE).exists():
            return
        config = cfg.load_yaml(d / CONFIG_FILE)
        title = curves_title(str(summary.get("task", config.get("task"))), config,
                             summary.get("outer_steps", config.get("outer_steps")))
        with writing(d / CURVES_FILE):
            plots.plot_curves(plots.read_metrics(d / METRICS_FILE), d / CURVES_FILE, title=title)
        logger.info("%s: wrote the missing %s", d, CURVES_FILE)


# ------------------------------------------------------------------------------------------ reading a run
def finished_summary(d: Path) -> Optional[Dict[str, Any]]:
    """The summary of a finished run in ``d`` (None when summary.json is absent or unreadable)."""
    if not (d / SUMMARY_FILE).exists():
        return None
    try:
        summary = json.loads((d / SUMMARY_FILE).read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if not isinstance(summary, dict):
        return None
    logger.info("%s already finished (%s exists): nothing to resume", d, SUMMARY_FILE)
    return summary


def read_settings(d: Path, option_keys: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``config.yaml`` and ``run_options.yaml`` of a run directory, checked.

    Parameters
    ----------
    d : Path
    option_keys : sequence of str
        The keys run_options.yaml may hold.

    Returns
    -------
    (dict, dict)
        The configuration (naming its ``task``) and the run options (empty when the file is absent).

    Raises
    ------
    ValueError
        An unreadable file, no task, or an unknown run option.
    """
    config = cfg.load_yaml(d / CONFIG_FILE)
    options = cfg.load_yaml(d / RUN_OPTIONS_FILE) if (d / RUN_OPTIONS_FILE).exists() else {}
    if not isinstance(config.get("task"), str):
        raise ValueError(f"{d / CONFIG_FILE} names no task (key 'task')")
    unknown = sorted(set(options) - set(option_keys))
    if unknown:
        raise ValueError(f"{d / RUN_OPTIONS_FILE}: unknown key(s) {', '.join(unknown)}")
    return config, options


def load_run(run_dir: Any) -> Dict[str, Any]:
    """Read a run directory.

    Parameters
    ----------
    run_dir : str or Path

    Returns
    -------
    dict
        ``dir`` (Path), ``summary`` (dict, empty if the run did not finish), ``records`` (list of dict).

    Raises
    ------
    ValueError
        Not a directory, or no metrics.jsonl.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"{str(d)!r} is not a run directory")
    if not (d / METRICS_FILE).exists():
        raise ValueError(f"{str(d)!r} has no {METRICS_FILE}: not a run directory of `bilevel run`")
    summary: Dict[str, Any] = {}
    if (d / SUMMARY_FILE).exists():
        try:
            summary = json.loads((d / SUMMARY_FILE).read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{str(d / SUMMARY_FILE)!r} is not valid JSON") from None
    return {"dir": d, "summary": summary, "records": plots.read_metrics(d / METRICS_FILE)}


__all__ = ["CONFIG_FILE", "METRICS_FILE", "SUMMARY_FILE", "CURVES_FILE", "RUN_OPTIONS_FILE", "LOGGER", "is_writer",
           "warn", "writing", "check_out_dir", "start_fresh", "remove_stale_temp_files", "DirLock", "curves_title",
           "write_results", "write_missing_curves", "finished_summary", "read_settings", "load_run"]
