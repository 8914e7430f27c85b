"""A Weights & Biases mirror of ``metrics.jsonl`` (runner key ``wandb: PROJECT``, ``bilevel run ... --wandb PROJECT``).

Every line the runner writes to ``metrics.jsonl`` is also logged to a W&B run of project ``PROJECT`` with
``wandb.log(metrics, step=line["step"])``: the same numeric entries as the TensorBoard mirror (booleans as 0 / 1,
nested dicts flattened to ``outer/inner``, strings and lists skipped). The run's resolved config is the W&B config,
and its name is the run directory's name.

The W&B run id is kept in the run directory (``wandb_id``), so a resumed run continues the same W&B run
(``resume="allow"``). A resumed run recomputes the steps after its checkpoint bitwise, so the metrics W&B already
holds for them are the same (only their wall-clock ``time`` and ``eval_time`` are the interrupted session's);
lines at steps W&B has already passed are not sent again (W&B accepts increasing steps only). Offline use:
``WANDB_MODE=offline``.

Needs the ``wandb`` package (``pip install 'bilevel[wandb]'``); without it the run refuses to start. Only rank 0 of a
distributed run logs.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from bilevel.app.run.tensorboard import scalars

__all__ = ["WandbLog"]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class WandbLog:
    """The W&B run of one run directory (started at the first write)."""

    def __init__(self, project: Any, run_dir: Any, config: Optional[Mapping[str, Any]] = None):
        if not isinstance(project, str) or not project.strip():
            raise ValueError(f"wandb must be a W&B project name, got {project!r}")
        try:
            import wandb  # noqa: F401 - checked here, used in write()
        except ImportError as err:
            raise ValueError("wandb: PROJECT needs the wandb package: pip install 'bilevel[wandb]' "
                             f"({err})") from None
        self.project = project.strip()
        self.run_dir = Path(run_dir)
        self.config = dict(config or {})
        self._run: Optional[Any] = None
        self._next_step = 0  # the first step W&B still accepts

    def _run_id(self) -> str:
        import wandb

        path = self.run_dir / "wandb_id"
        if path.exists():
            run_id = path.read_text().strip()
            if not _ID.match(run_id):
                raise ValueError(f"{path} does not hold a W&B run id (got {run_id[:80]!r}); delete it to start a new "
                                 "W&B run")
            return run_id
        run_id = wandb.util.generate_id()
        path.write_text(run_id + "\n")
        return run_id

    def _start(self) -> Any:
        import wandb

        run = wandb.init(project=self.project, id=self._run_id(), resume="allow", name=self.run_dir.name,
                         dir=str(self.run_dir), config=self.config)
        self._next_step = int(getattr(run, "step", 0) or 0)
        return run

    def write(self, line: Mapping[str, Any]) -> None:
        """Log one metrics line at its ``step`` (skipped when W&B already holds that step)."""
        if self._run is None:
            self._run = self._start()
        step = int(line["step"])
        if step < self._next_step:
            return
        metrics: Dict[str, float] = {name: (v if math.isfinite(v) else float("nan")) for name, v in scalars(line)}
        self._run.log(metrics, step=step)
        self._next_step = step + 1

    def close(self) -> None:
        """Finish the W&B run (idempotent)."""
        if self._run is not None:
            run, self._run = self._run, None
            run.finish()
