"""Shared helpers of tests/resume (a uniquely named module, no conftest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

from cli_testutils import main  # noqa: F401  (re-exported for the tests of this folder)

HERE = Path(__file__).resolve().parent

#: wall-clock fields: differ between runs, left out of the bitwise comparisons
WALL_LINE_KEYS = ("time", "eval_time")
WALL_SUMMARY_KEYS = ("loop_seconds", "wall_seconds", "peak_rss_mb")


def interrupted_toy_run(config: Dict[str, Any], run_dir: Path, steps: int) -> Path:
    """A toy run stopped (as if killed) after ``steps`` outer steps, checkpoints every 5."""
    from bilevel.app.run.runner import TaskRunner

    r = TaskRunner("toy", config, run_dir, quiet=True, checkpoint_every=5)
    r.setup()
    for _ in range(steps):
        r.step()
        if r.checkpoint_due():
            r.save_checkpoint()
    r.close()
    return run_dir


def env() -> Dict[str, str]:
    """Environment of a ``python -m bilevel`` subprocess that finds the helper task modules."""
    return dict(os.environ, PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def bilevel_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "bilevel", *args]


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(bilevel_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env())


def lines(run_dir: Path) -> List[str]:
    """The raw lines of metrics.jsonl."""
    return (Path(run_dir) / "metrics.jsonl").read_text().splitlines()


def comparable_lines(run_dir: Path) -> List[Dict[str, Any]]:
    """metrics.jsonl records without the wall-clock fields (floats compared bitwise: JSON repr round-trips)."""
    return [{k: v for k, v in json.loads(s).items() if k not in WALL_LINE_KEYS} for s in lines(run_dir)]


def comparable_summary(run_dir: Path) -> Dict[str, Any]:
    s = json.loads((Path(run_dir) / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in WALL_SUMMARY_KEYS}
