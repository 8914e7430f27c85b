"""One session of a run: from set-up (or a restored checkpoint) through the remaining outer steps to the summary.

:func:`run_session` drives a :class:`bilevel.app.run.runner.TaskRunner` (through its public methods): a progress
bar, a checkpoint every ``checkpoint_every`` steps, and no lost work when the run stops early --

* on divergence (:class:`~bilevel.app.run.guards.DivergenceError`) the state before the failed step is saved as
  the last checkpoint and the error names it;
* on SIGINT / SIGTERM (:class:`~bilevel.app.run.guards.RunInterrupted`, with ``handle_signals``) the state of
  the last completed step is saved (a snapshot is taken before every step while checkpoints are on) and the
  error's message names the checkpoint and the resume command.

The run directory's lock is released at the end in every case. Costs: one state snapshot (a deep copy of the
loop, task and guard state) per step while checkpoints are on, plus the runner's own steps.
"""
from __future__ import annotations

import shlex
from typing import Any, Dict, Mapping, Optional

from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run.guards import DivergenceError, RunInterrupted, StopSignals
from bilevel.app.run.metrics import Progress


def run_session(runner: Any, handle_signals: bool = True) -> Dict[str, Any]:
    """Set ``runner`` up (unless done already), run its remaining steps, finish; return the summary.

    Parameters
    ----------
    runner : TaskRunner
    handle_signals : bool
        Turn SIGINT / SIGTERM into :class:`bilevel.app.run.guards.RunInterrupted` (a ``KeyboardInterrupt``)
        raised after the state of the last completed outer step was saved as a checkpoint (when checkpoints
        are on). Only in the main thread; the previous handlers are restored on return.

    Returns
    -------
    dict
        The summary.
    """
    with StopSignals(handle_signals) as stop:
        return _session(runner, stop)


def _session(runner: Any, stop: StopSignals) -> Dict[str, Any]:
    if runner.loop is None:
        runner.setup()
    progress = Progress(runner.config["outer_steps"], runner.t, f"{runner.task}/{runner.config['method']}",
                        runner.quiet)
    looped = False  # True when the loop ended normally: finish() then writes the summary under the lock
    good: Optional[Dict[str, Any]] = None
    try:
        while not runner.done:
            with stop.deferred():  # a signal here waits for the snapshot (then stop.check raises)
                good = runner.state_dict() if runner.checkpoint_every > 0 and runner.t > 0 else None
            stop.check()
            try:  # a signal during the step abandons it: `good` is the state to save
                record = runner.step()
            except DivergenceError as err:  # keep the state before the failed step as the last checkpoint
                _diverged(runner, err, good)
                raise
            with stop.deferred():  # a signal here is raised at the next step's stop.check
                good = None
                if runner.checkpoint_due():
                    runner.save_checkpoint()
                progress.update(record)
        looped = True
    except RunInterrupted as err:
        if good is None and stop.received is not None and runner.checkpoint_every > 0 and runner.t > 0:
            good = runner.state_dict()  # interrupted between two steps (a second signal): save this state
        _interrupted(runner, err, good, finishing=False)
        raise
    finally:
        progress.close()
        if looped:
            runner.metrics.close()
        else:
            runner.close()  # also releases the run directory's lock
    try:
        return runner.finish()
    except RunInterrupted as err:
        _interrupted(runner, err, None, finishing=True)
        raise
    finally:
        runner.release_lock()


def _diverged(runner: Any, err: DivergenceError, good: Optional[Mapping[str, Any]]) -> None:
    """Save ``good`` (the state before the failed step) unless it is saved already; name the checkpoint in ``err``."""
    if good is not None and not ckpt.is_checkpoint_of(runner.last_checkpoint, good):
        path = runner.save_checkpoint(good)
        err.args = (f"{err.args[0]}; saved the last good state (outer step {good['t']}) to {path}",)
    elif runner.last_checkpoint is not None:
        err.args = (f"{err.args[0]}; last good checkpoint: {runner.last_checkpoint}",)


def _interrupted(runner: Any, err: RunInterrupted, good: Optional[Mapping[str, Any]], finishing: bool) -> None:
    """Save ``good`` (the state after the last completed step) unless it is saved already; word ``err``."""
    path = runner.last_checkpoint
    if good is not None and not ckpt.is_checkpoint_of(path, good):
        path = runner.save_checkpoint(good)
    resume = f"bilevel run --resume {shlex.quote(str(getattr(runner, 'real_out', runner.out)))}"
    total = runner.config["outer_steps"]
    if finishing:
        what = f"interrupted by {err.signame} while writing the final files (all {total} outer steps done)"
        saved = f"checkpoint {path}" if path is not None else "no checkpoint (checkpoints are off)"
        err.args = (f"{what}; {saved}; `{resume}` writes the missing files"
                    + ("" if path is not None else " after running the steps again"),)
    else:
        done = int(good["t"]) if good is not None else runner.t
        what = f"interrupted by {err.signame} after {done} of {total} outer steps"
        if path is not None and good is not None:
            saved = f"saved the last completed step (outer step {done}) to {path}"
        elif path is not None:
            saved = f"last checkpoint: {path}"
        elif runner.checkpoint_every == 0:
            saved = "no checkpoint (checkpoints are off: --checkpoint-every 0), a resume starts over"
        else:
            saved = "no step completed yet, a resume starts over"
        err.args = (f"{what}; {saved}; resume with: {resume}",)
    err.checkpoint = path


__all__ = ["run_session"]
