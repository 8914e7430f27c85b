"""A TensorBoard mirror of ``metrics.jsonl`` (runner key ``tensorboard: DIR``, ``bilevel run ... --tensorboard DIR``).

Every line the runner writes to ``metrics.jsonl`` is also written to ``DIR`` as TensorBoard scalars through
:class:`torch.utils.tensorboard.SummaryWriter`: each numeric entry (booleans as 0 / 1, nested dicts flattened to
``outer/inner``) under its own name, at ``global_step`` = the line's ``step``. Strings and lists are not
scalars and are skipped.

A resumed run continues the same event files: the writer is opened with ``purge_step`` = the first step after
the restored checkpoint, so the events that an interrupted session wrote past it (the lines ``metrics.jsonl`` was
cut back to) are discarded by TensorBoard when it loads the directory, and the scalars keep matching the file.

Needs the ``tensorboard`` package (``pip install 'bilevel[tensorboard]'``); without it the run refuses to start.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

__all__ = ["TensorBoardLog", "scalars"]


def scalars(line: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, float]]:
    """``(name, value)`` for every numeric entry of a metrics line except ``step`` (nested dicts flattened)."""
    for key, value in line.items():
        name = f"{prefix}{key}"
        if not prefix and key == "step":
            continue
        if isinstance(value, Mapping):
            yield from scalars(value, prefix=f"{name}/")
        elif isinstance(value, (bool, int, float)):
            yield name, float(value)


class TensorBoardLog:
    """The event files of one run (opened at the first write)."""

    def __init__(self, log_dir: Any):
        if not isinstance(log_dir, (str, Path)) or not str(log_dir):
            raise ValueError(f"tensorboard must be a directory path, got {log_dir!r}")
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - checked here, used in write()
        except ImportError as err:
            raise ValueError("tensorboard: DIR needs the tensorboard package: pip install 'bilevel[tensorboard]' "
                             f"({err})") from None
        self.log_dir = Path(log_dir)
        self._writer: Optional[Any] = None
        self._purge_step: Optional[int] = None

    def resume_at(self, step: int) -> None:
        """The run continues after outer step ``step``: events at later steps from an earlier session are dropped."""
        self.close()
        self._purge_step = int(step) + 1

    def write(self, line: Mapping[str, Any]) -> None:
        """Write one metrics line (its ``step`` is the global step) and flush it."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
        step = int(line["step"])
        for name, value in scalars(line):
            self._writer.add_scalar(name, value if math.isfinite(value) else float("nan"), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()


def read_scalars(log_dir: Any) -> Dict[str, Dict[int, float]]:
    """Every scalar of the event files in ``log_dir`` as ``name -> {step: value}`` (as TensorBoard loads them, purges
    applied); for tests and scripts."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {int(e.step): float(e.value) for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
