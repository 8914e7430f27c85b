"""The ``device`` option (issue 17, GPU): ``--device`` / ``device:``, its resolution, where runs record it, resuming on
another device, and the device plumbing of the tasks, reproduce and bench -- everything that runs on the CPU.
The GPU side is tests/app/test_gpu.py (``pytest -m gpu``)."""
import json
import logging
import types

import numpy as np
import pytest
import torch
import yaml

import runner_fake_task as fake
from bilevel.app import config as cfg
from bilevel.app import device as dev
from bilevel.app.data import EpisodeSampler
from bilevel.app.run import state as run_state
from bilevel.app.run.runner import TaskRunner, resume_run, run_task
from bilevel.app.run.task_runner import build_run
from cli_testutils import main

FAKE = ["--task-module", "runner_fake_task"]
TOY = {"dtype": "float64", "outer_steps": 12, "log_every": 4, "threads": 1}


@pytest.fixture
def no_cuda(monkeypatch):
    """This process sees no CUDA (whatever the machine has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("cpu", "cpu"), ("CUDA", "cuda"), (" cuda:1 ", "cuda:1"),
                                             ("cuda:0", "cuda:0")])
def test_check_device_accepts_the_documented_values(value, expected):
    assert dev.check_device(value) == expected


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps", "", 0, None, "cpu:0"])
def test_check_device_names_what_is_allowed(value):
    with pytest.raises(ValueError, match=r"option 'device': expected auto, cpu, cuda or cuda:N"):
        dev.check_device(value)


def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused(no_cuda):
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for value in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ValueError, match=rf"device '{value}' was asked for, but CUDA is not available.*use "
                                             r"device cpu, or auto"):
            dev.resolve_device(value)
    assert dev.synchronizer("cpu") is None


def test_resolve_device_defaults_to_auto():
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert dev.resolve_device() == expected


# ------------------------------------------------------------------------------------------ configuration
def resolve(*layers, names=()):
    return cfg.resolve_config("fake", fake, *layers, names=names)


def test_device_is_a_runner_option_defaulting_to_auto_and_passed_to_build():
    c = resolve()
    assert c["device"] == "auto" and cfg.RUNNER_OPTIONS["device"][0] == "auto"
    assert resolve({"device": "CPU"})["device"] == "cpu"
    assert "device" in cfg.BUILD_KEYS and cfg.build_config(resolve({"device": "cpu"}), fake)["device"] == "cpu"


@pytest.mark.parametrize("value", ["gpu", "cuda:one", 3, True])
def test_a_bad_device_in_yaml_is_rejected_with_the_layer(value):
    with pytest.raises(ValueError, match=r"option 'device'.*(auto, cpu, cuda or cuda:N|a string).* in config file "
                                         r"c.yaml"):
        resolve({"device": value}, names=("config file c.yaml",))


def test_config_round_trip_keeps_the_setting(tmp_path):
    c = resolve({"device": "cuda:1"})
    cfg.dump_yaml(c, tmp_path / "c.yaml")
    back = cfg.load_yaml(tmp_path / "c.yaml")
    assert back["device"] == "cuda:1" and resolve(back) == c


# ------------------------------------------------------------------------------------------ bilevel run
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_cli_run_records_the_setting_and_the_resolved_device(tmp_path, capsys, no_cuda, device):
    out = tmp_path / device
    code, _, err = main(["run", "toy", "--device", device, "--outer-steps", "3", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["device"] == device  # the setting, as given
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and "peak_gpu_mb" not in summary  # where it ran


def test_cli_device_from_yaml_and_command_line_precedence(tmp_path, capsys, no_cuda):
    conf = tmp_path / "c.yaml"
    conf.write_text("device: cuda\nouter_steps: 2\n")
    code, _, err = main(["run", "hyperclean", *FAKE, "--config", str(conf), "--quiet", "--out", str(tmp_path / "a")],
                        capsys)
    assert code == 2 and "device 'cuda' was asked for, but CUDA is not available" in err
    assert not (tmp_path / "a").exists()  # refused before anything is written
    code, _, err = main(["run", "hyperclean", *FAKE, "--config", str(conf), "--device", "cpu", "--quiet", "--out",
                         str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert fake.LAST_CONFIG["device"] == "cpu"  # build gets the resolved device
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "0"])
def test_cli_rejects_a_bad_device(tmp_path, capsys, value):
    code, _, err = main(["run", "toy", "--device", value, "--quiet", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "argument --device" in err and "expected auto, cpu, cuda or cuda:N" in err


def test_run_task_refuses_cuda_without_cuda_before_writing(tmp_path, no_cuda):
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_task("toy", {"device": "cuda"}, tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_a_task_that_ignores_the_device_is_refused():
    def build(config):
        run = fake.build(config)
        run.x0 = torch.zeros(4, device="meta")
        return run

    module = types.SimpleNamespace(__name__="ignores_device", OPTIONS=fake.OPTIONS, COMMON_DEFAULTS={}, build=build)
    config = resolve({"device": "cpu"})
    with pytest.raises(ValueError, match=r"asked to build on device cpu but its x0 / y0 lie on meta"):
        build_run(module, config, torch.device("cpu"))


# ------------------------------------------------------------------------------------------ resuming elsewhere
def _interrupted(run_dir, config, steps):
    r = TaskRunner("toy", config, run_dir, quiet=True, checkpoint_every=4)
    r.setup()
    for _ in range(steps):
        r.step()
        if r.checkpoint_due():
            r.save_checkpoint()
    r.close()
    return r


def test_checkpoints_record_the_device_and_a_run_continues_on_another(tmp_path, capsys, caplog, no_cuda):
    straight = tmp_path / "straight"
    run_task("toy", dict(TOY, device="cpu"), straight, quiet=True, checkpoint_every=4)
    victim = tmp_path / "victim"
    _interrupted(victim, dict(TOY, device="cpu"), 6)  # checkpoint at step 4
    from bilevel.app.run import checkpoint as ckpt

    state = ckpt.load(ckpt.list_checkpoints(victim)[-1])
    assert state["device"] == "cpu"
    # the run moved to a machine where config.yaml's device is not available: refused, unless told where to go
    config = yaml.safe_load((victim / "config.yaml").read_text())
    (victim / "config.yaml").write_text(yaml.safe_dump(dict(config, device="cuda"), sort_keys=False))
    code, _, err = main(["run", "--resume", str(victim), "--quiet"], capsys)
    assert code == 2 and "CUDA is not available" in err and f"bilevel run --resume {victim} --device cpu" in err
    code, _, err = main(["run", "--resume", str(victim), "--device", "gpu"], capsys)
    assert code == 2 and "expected auto, cpu, cuda or cuda:N" in err
    with caplog.at_level(logging.INFO, logger="bilevel.app.run.runner"):
        code, _, err = main(["run", "--resume", str(victim), "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert "resumed" in caplog.text  # from the checkpoint: the device is no part of its configuration check
    assert json.loads((victim / "summary.json").read_text())["device"] == "cpu"
    assert yaml.safe_load((victim / "config.yaml").read_text())["device"] == "cuda"  # the setting is kept
    a = [json.loads(s) for s in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(s) for s in (victim / "metrics.jsonl").read_text().splitlines()]
    assert [r["upper"] for r in a[1:]] == [r["upper"] for r in b[1:]]


def test_restore_logs_a_state_taken_on_another_device(tmp_path, caplog):
    r = TaskRunner("toy", dict(TOY, device="cpu"), tmp_path / "r", quiet=True, checkpoint_every=0)
    r.setup()
    try:
        for _ in range(3):
            r.step()
        state = r.state_dict()
        assert state["device"] == "cpu"
        state["device"] = "cuda:0"  # as if taken on a GPU (a checkpoint's tensors are read onto the CPU)
        with caplog.at_level(logging.INFO, logger="bilevel.app.run.runner"):
            r.load_state_dict(state)
    finally:
        r.close()
    assert "taken on cuda:0; the run continues on cpu" in caplog.text and r.t == 3


def test_on_device_moves_plain_data_but_leaves_the_optimizer_state_to_torch():
    opt = {"state": {0: {"step": torch.tensor(3.0)}}}
    tree = {"x": torch.ones(2), "nested": [torch.zeros(1), (torch.ones(1), 2)], "optimizer": opt, "s": "a"}
    out = run_state.on_device(tree, torch.device("meta"))
    assert out["x"].device.type == "meta" and out["nested"][0].device.type == "meta"
    assert out["nested"][1][0].device.type == "meta" and out["nested"][1][1] == 2 and out["s"] == "a"
    assert out["optimizer"] is opt
    same = run_state.on_device(tree, torch.device("cpu"))
    assert same["x"] is tree["x"]  # already there: not copied


# ------------------------------------------------------------------------------------------ tasks
def test_episode_indices_are_the_draws_of_sample():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 6, 6), dtype=np.uint8)
    labels = np.repeat(np.arange(6), 10)
    a = EpisodeSampler(images, labels, 3, 2, 3, seed=7)
    b = EpisodeSampler(images, labels, 3, 2, 3, seed=7)
    for _ in range(2):
        ep, idx = a.sample(4), b.sample_indices(4)
        assert idx.support.shape == (4, 6) and idx.query.shape == (4, 9)
        taken = b.take(idx)
        for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert np.array_equal(getattr(ep, name), getattr(taken, name)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_images_gather_equals_the_numpy_episode(dtype):
    from bilevel.app.tasks.fewshot import DeviceImages, episode_tensors

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 16, 16), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    sampler = EpisodeSampler(images, labels, 2, 1, 2, seed=3)
    idx = sampler.sample_indices(3)
    store = DeviceImages(images, dtype, torch.device("cpu"))
    ref = episode_tensors(sampler.take(idx), dtype)
    assert torch.equal(store.gather(idx.support), ref[0]) and torch.equal(store.gather(idx.query), ref[2])
    assert ref[0].shape == (3, 2, 1, 16, 16) and ref[0].dtype == dtype
    assert store.images.data_ptr() == torch.from_numpy(images).data_ptr()  # shared with numpy on the CPU


def test_tasks_build_on_the_configured_device_and_refuse_cuda_without_it(no_cuda):
    from bilevel.app.tasks import hyperclean, toy

    run = hyperclean.build(hyperclean.config_with_defaults(train_size=40, val_size=40, test_size=40, device="cpu"))
    assert run.x0.device.type == "cpu" and run.y0["weight"].device.type == "cpu"
    assert toy.build(toy.config_with_defaults()).x0.device.type == "cpu"  # no device key: the CPU, as before
    with pytest.raises(ValueError, match="CUDA is not available"):
        toy.build(toy.config_with_defaults(device="cuda"))


def test_nothing_forces_float64_the_default_dtype_is_float32():
    c = resolve()
    assert c["dtype"] == "float32"
    assert cfg.resolve_config("toy", cfg.load_task("toy"))["dtype"] == "float32"


# ------------------------------------------------------------------------------------------ reproduce, bench
def test_reproduce_grid_passes_the_device_and_reads_finished_runs_back_on_any(tmp_path, no_cuda):
    from bilevel.app.reproduce.common import Job, run_grid

    job = Job("toy", "bda", "BDA", 0, "toy", {"outer_steps": 2, "seed": 0, "dtype": "float64"}, ("x_final",))
    (pair,) = run_grid([job], tmp_path, progress=False, device="cpu")
    run_dir = tmp_path / job.name
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["device"] == "cpu"
    assert pair[1]["device"] == "cpu"
    (again,) = run_grid([job], tmp_path, progress=False, device="auto")  # read back, not run again
    assert again[1] == pair[1]


def test_reproduce_and_bench_refuse_cuda_without_cuda(tmp_path, capsys, no_cuda):
    code, _, err = main(["reproduce", "synthetic", "--scale", "smoke", "--device", "cuda", "--out", str(tmp_path)],
                        capsys)
    assert code == 2 and "CUDA is not available" in err
    assert not list(tmp_path.iterdir())
    code, _, err = main(["bench", "--smoke", "--device", "cuda", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "CUDA is not available" in err
    code, _, err = main(["bench", "--smoke", "--device", "tpu", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "expected auto, cpu, cuda or cuda:N" in err


def test_bench_timer_synchronizes_around_every_measurement():
    from bilevel_benchmarks import bench

    events = []
    bench.time_round_robin({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, warmup=1, reps=2,
                           sync=lambda: events.append("sync"))
    # each measurement: sync, the call, sync (the clock is read after each sync)
    assert events[:6] == ["sync", "a", "sync", "sync", "b", "sync"] and events.count("sync") == 12
