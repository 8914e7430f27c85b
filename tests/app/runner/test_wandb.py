"""``wandb: PROJECT``: every metrics.jsonl line is logged to W&B at its step -- in one session, and across a kill and
a resume (the same W&B run continues). The ``wandb`` package is optional and not installed in the test
environment: a stand-in module with W&B's semantics (one history per run id, increasing steps only, ``resume``
continuing a run) takes its place in ``sys.modules``."""
import json
import sys
import types
import warnings

import pytest

from bilevel.app.run.runner import TaskRunner, resume_run, run_task
from bilevel.app.run.tensorboard import scalars
from bilevel.app.run.wandb_log import WandbLog

TOY = {"problem": "bda", "method": "rhg", "inner_steps": 4, "outer_steps": 23, "log_every": 2, "dtype": "float64"}


class _Run:
    def __init__(self, store, run_id, **kwargs):
        self.history = store.setdefault(run_id, {})
        self.kwargs = kwargs
        self.finished = False

    @property
    def step(self):  # W&B's next step: one past the last logged one
        return max(self.history, default=-1) + 1

    def log(self, metrics, step):
        if step < self.step:
            warnings.warn(f"wandb: step {step} < current step {self.step}, data dropped")
            return
        self.history.setdefault(step, {}).update(metrics)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    store = {}
    ids = iter(f"run{i}" for i in range(100))
    mod = types.ModuleType("wandb")
    mod.runs = []

    def init(*, project, id, resume, name, dir, config):
        assert resume == "allow"
        run = _Run(store, id, project=project, name=name, dir=dir, config=config)
        mod.runs.append(run)
        return run

    mod.init = init
    mod.util = types.SimpleNamespace(generate_id=lambda: next(ids))
    mod.store = store
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def _expected(run_dir):
    """step -> {name: value} of every numeric entry of metrics.jsonl."""
    out = {}
    for text in (run_dir / "metrics.jsonl").read_text().splitlines():
        line = json.loads(text)
        out[int(line["step"])] = dict(scalars(line))
    return out


def test_logged_history_equals_metrics_jsonl(tmp_path, fake_wandb):
    run_task("toy", dict(TOY, wandb="my-project"), tmp_path / "run", quiet=True)
    (run,) = fake_wandb.runs
    assert run.kwargs["project"] == "my-project" and run.kwargs["name"] == "run" and run.finished
    assert run.kwargs["config"]["method"] == "rhg"
    assert run.history == _expected(tmp_path / "run")
    assert max(run.history) == 23 and "upper" in run.history[23]


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, fake_wandb):
    run_dir = tmp_path / "run"
    r = TaskRunner("toy", dict(TOY, wandb="p"), run_dir, quiet=True, checkpoint_every=5)
    r.setup()
    for _ in range(17):  # checkpoints at 5, 10, 15; the killed session logged up to step 16
        r.step()
        if r.checkpoint_due():
            r.save_checkpoint()
    r.close()
    assert max(fake_wandb.runs[0].history) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no step is sent twice
        resume_run(run_dir, quiet=True)
    first, second = fake_wandb.runs
    assert first.history is second.history  # one W&B run, continued (its id is kept in the run directory)
    assert (run_dir / "wandb_id").read_text().strip() == "run0"
    expected = _expected(run_dir)
    assert set(second.history) == set(expected)
    for step, metrics in expected.items():
        if step <= 16:  # logged by the killed session: the same numbers, its own wall-clock times
            metrics = {k: v for k, v in metrics.items() if k not in ("time", "eval_time")}
            assert {k: second.history[step][k] for k in metrics} == metrics, step
        else:
            assert second.history[step] == metrics, step


def test_without_the_package_the_run_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'bilevel\[wandb\]'"):
        run_task("toy", dict(TOY, wandb="p"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_bad_values(tmp_path, fake_wandb):
    with pytest.raises(ValueError, match="W&B project name"):
        WandbLog("", tmp_path)
    (tmp_path / "wandb_id").write_text("not an id!\n")
    with pytest.raises(ValueError, match="does not hold a W&B run id"):
        WandbLog("p", tmp_path).write({"step": 0, "upper": 1.0})


def test_only_rank_0_logs(tmp_path, fake_wandb):
    from bilevel.app.launch import DistributedTaskRunner
    from bilevel.parallel import DistContext

    config = dict(TOY, wandb="p")
    main_rank = DistributedTaskRunner("toy", config, tmp_path / "r0", ctx=DistContext(rank=0, world_size=2))
    other = DistributedTaskRunner("toy", config, tmp_path / "r1", ctx=DistContext(rank=1, world_size=2))
    assert main_rank.wandb is not None and other.wandb is None
    other._cleanup()
