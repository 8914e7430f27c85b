"""GPU tests (issue 17): runs, hypergradients, few-shot episodes and checkpoints on CUDA agree with the CPU.

Marked ``gpu`` and skipped without CUDA. Run them on a machine with a GPU with ``pytest -m gpu`` (the rest of the
suite hides CUDA, tests/conftest.py; ``tools/gpu_check.sh`` runs them with a quick bench and a paper-scale
hyper-cleaning run). Tolerances are float32's: the CPU and the GPU sum in different orders.
"""
import json
import os

import pytest
import torch
import yaml

import bilevel
from bilevel.app.device import resolve_device
from bilevel.app.run.runner import TaskRunner, resume_run, run_task
from cli_testutils import main


def _skip_reason() -> str:
    reason = "CUDA is not available (torch.cuda.is_available() is False)"
    if os.environ.get("BILEVEL_TEST_CUDA_HIDDEN") == "1":
        reason += "; this session hides CUDA from the CPU suite: run the GPU tests with pytest -m gpu"
    return reason


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_skip_reason())]

#: a small hyper-cleaning run on the embedded digits (no download)
HC = {"dataset": "digits", "train_size": 200, "val_size": 200, "test_size": 200, "inner_steps": 20,
      "inner_lr": 0.3, "outer_steps": 6, "outer_lr": 0.3, "log_every": 1, "seed": 0}
RTOL, ATOL = 1e-3, 1e-5


def _lines(d):
    return [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]


def _close(a, b, rtol=RTOL, atol=ATOL):
    return abs(a - b) <= atol + rtol * abs(b)


def test_auto_and_cuda_resolve_to_a_gpu():
    current = torch.cuda.current_device()
    assert resolve_device("auto") == torch.device("cuda", current)
    assert resolve_device("cuda") == torch.device("cuda", current)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_hyperclean_run_on_cuda_equals_the_cpu_run(tmp_path, capsys):
    dirs = {}
    for device in ("cuda", "cpu"):
        dirs[device] = tmp_path / device
        args = ["run", "hyperclean", "--device", device, "--quiet", "--out", str(dirs[device])]
        for k, v in HC.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        code, _, err = main(args, capsys)
        assert code == 0, err
    gpu, cpu = (json.loads((dirs[d] / "summary.json").read_text()) for d in ("cuda", "cpu"))
    assert gpu["device"].startswith("cuda:") and cpu["device"] == "cpu"
    assert gpu["peak_gpu_mb"] > 0
    assert yaml.safe_load((dirs["cuda"] / "config.yaml").read_text())["device"] == "cuda"
    for a, b in zip(_lines(dirs["cuda"])[1:], _lines(dirs["cpu"])[1:]):
        for key in ("upper", "lower", "grad_norm"):
            assert _close(a[key], b[key]), (a["step"], key, a[key], b[key])
    assert _close(gpu["upper_final"], cpu["upper_final"])
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) <= 0.01  # an argmax may flip on a near tie
    assert abs(gpu["f1"] - cpu["f1"]) <= 0.02


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_rhg_hypergradient_on_cuda_equals_cpu(model):
    from bilevel.app.tasks import hyperclean

    grads = {}
    for device in ("cuda", "cpu"):
        run = hyperclean.build(hyperclean.config_with_defaults(
            dataset="digits", train_size=200, val_size=200, test_size=100, model=model, hidden=32, device=device))
        assert run.x0.device.type == device
        upper, lower = run.objectives(0)
        x = torch.linspace(-1, 1, run.x0.numel(), device=run.x0.device)  # not a symmetric point
        res = bilevel.hypergrad(upper, lower, x, run.y0, method="rhg", inner_steps=30, inner_lr=0.3)
        assert res.grad.device.type == device
        grads[device] = res.grad
    g, c = grads["cuda"].cpu(), grads["cpu"]
    assert torch.allclose(g, c, rtol=1e-3, atol=1e-6 * float(c.abs().max())), float((g - c).abs().max())


def test_fewshot_gathers_the_cpu_episodes_on_cuda():
    from bilevel.app.tasks import fewshot

    tiny = dict(width=4, ways=3, shots=1, queries=4, meta_batch=2, max_per_class=20, test_episodes=6, test_chunk=4,
                inner_steps=3, outer_steps=2, inner_lr=0.5, outer_lr=0.01)
    tasks = {d: fewshot.FewShotTask(fewshot.config_with_defaults(device=d, **tiny)) for d in ("cuda", "cpu")}
    assert tasks["cuda"].images["train"].images.device.type == "cuda"  # the images live there, put once
    for t in (0, 5):
        a = tasks["cuda"].batch_tensors(tasks["cuda"].train_index(t))
        b = tasks["cpu"].batch_tensors(tasks["cpu"].train_index(t))
        assert all(u.device.type == "cuda" for u in a)
        assert all(torch.equal(u.cpu(), v) for u, v in zip(a, b))  # same draws, same pixels, exactly
    x0 = {d: tasks[d].x0() for d in tasks}
    assert all(torch.equal(x0["cuda"][k].cpu(), x0["cpu"][k]) for k in x0["cpu"])  # drawn on the CPU, then moved
    values = {d: float(tasks[d].objectives(0)[0](x0[d], tasks[d].y0())) for d in tasks}
    assert _close(values["cuda"], values["cpu"])


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, first, then):
    config = dict(HC, warm_start=True, outer_steps=8, log_every=2)  # warm start: the checkpoint holds y's start
    straight = run_task("hyperclean", dict(config, device="cpu"), tmp_path / "straight", quiet=True,
                        checkpoint_every=4)
    victim = tmp_path / "victim"
    r = TaskRunner("hyperclean", dict(config, device=first), victim, quiet=True, checkpoint_every=4)
    r.setup()
    for _ in range(6):  # checkpoint at step 4
        r.step()
        if r.checkpoint_due():
            r.save_checkpoint()
    r.close()
    summary = resume_run(victim, quiet=True, device=then)
    assert summary["device"].split(":")[0] == then and summary["outer_steps"] == 8
    assert _close(summary["upper_final"], straight["upper_final"], rtol=1e-3)
    for a, b in zip(_lines(victim)[1:], _lines(tmp_path / "straight")[1:]):
        assert a["step"] == b["step"] and _close(a["upper"], b["upper"]), (a["step"], a["upper"], b["upper"])


def test_bf16_autocast_on_cuda(tmp_path):
    s = run_task("hyperclean", dict(HC, device="cuda", outer_steps=3), tmp_path / "bf16", quiet=True,
                 precision="bf16")
    assert s["device"].startswith("cuda:") and s["upper_final"] is not None and s["upper_final"] > 0


def test_toy_and_fewshot_init_run_on_cuda(tmp_path):
    s = run_task("toy", {"device": "cuda", "outer_steps": 20}, tmp_path / "toy", quiet=True)
    c = run_task("toy", {"device": "cpu", "outer_steps": 20}, tmp_path / "toy-cpu", quiet=True)
    assert s["device"].startswith("cuda:") and _close(s["x_final"], c["x_final"])
    s = run_task("fewshot-init", {"device": "cuda", "outer_steps": 2, "width": 4, "ways": 3, "queries": 2,
                                  "meta_batch": 2, "max_per_class": 20, "test_episodes": 4, "test_chunk": 2,
                                  "log_every": 1}, tmp_path / "init", quiet=True)
    assert s["device"].startswith("cuda:") and 0.0 <= s["meta_test_accuracy"] <= 1.0


def test_bench_smoke_on_cuda(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code, _, err = main(["bench", "--smoke", "--device", "cuda", "--out", str(tmp_path),
                             "--only", "toy,linear,fhg,fewshot"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    records = json.loads((tmp_path / "bench.json").read_text())
    assert records and all(r["device"].startswith("cuda:") and r["seconds_per_iter"] > 0 for r in records)
    assert {r.get("mem_measure") for r in records if r["problem"] == "hyperclean-linear-wd"} == {"cuda"}
    assert "device: cuda" in (tmp_path / "BENCHMARKS.md").read_text()
