"""Checkpoint files: format, atomic writing, pruning, corruption fallback and the ``--resume`` command line."""
import logging

import pytest
import torch

from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run.runner import resume_run, run_task

from resume_test_helpers import comparable_lines, comparable_summary, interrupted_toy_run, main

TOY = {"dtype": "float64", "outer_steps": 30, "log_every": 4, "threads": 1, "method": "bda",
       "method_options": {"upper_lr": 0.7}}


def test_encode_decode_roundtrip_and_damage_detection(tmp_path):
    state = {"t": 3, "x": torch.arange(5, dtype=torch.float64), "nested": {"a": [1, 2.5, None]}}
    data = ckpt.encode(state)
    back = ckpt.decode(data)
    assert back["t"] == 3 and torch.equal(back["x"], state["x"]) and back["nested"] == state["nested"]
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.decode(data[:-7], "f.pt")
    flipped = bytearray(data)
    flipped[-20] ^= 0xFF
    with pytest.raises(ckpt.CheckpointError, match="f.pt: corrupt: sha256"):
        ckpt.decode(bytes(flipped), "f.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a bilevel checkpoint"):
        ckpt.decode(b"garbage", "f.pt")


def test_save_is_atomic_and_keeps_the_newest_two(tmp_path):
    for step in (10, 20, 30):
        path = ckpt.save({"t": step}, tmp_path, step)
        assert path.name == ckpt.checkpoint_name(step)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-000020.pt", "step-000030.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == names  # no temp files
    assert ckpt.load(tmp_path / "checkpoints" / "step-000030.pt")["t"] == 30


def _interrupted(tmp_path, name, steps):
    return interrupted_toy_run(TOY, tmp_path / name, steps)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    straight = tmp_path / "straight"
    run_task("toy", TOY, straight, quiet=True, checkpoint_every=5)
    victim = _interrupted(tmp_path, "victim", 17)   # checkpoints at 10 and 15, 2 steps of lines after them
    newest = victim / "checkpoints" / "step-000015.pt"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    else:
        b = bytearray(data)
        b[len(b) // 2] ^= 0x5A
        newest.write_bytes(bytes(b))
    with caplog.at_level(logging.INFO, logger="bilevel.app.run.runner"):
        resume_run(victim, quiet=True)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"skipping bad checkpoint {newest}" in messages
    assert ("truncated" if damage == "truncate" else "checksum mismatch") in messages
    assert "step-000010.pt" in messages  # resumed from the previous one
    assert comparable_lines(victim) == comparable_lines(straight)
    assert comparable_summary(victim) == comparable_summary(straight)


def test_resume_without_any_usable_checkpoint_starts_over(tmp_path, caplog):
    straight = tmp_path / "straight"
    run_task("toy", TOY, straight, quiet=True, checkpoint_every=0)
    victim = _interrupted(tmp_path, "victim", 8)
    for p in ckpt.list_checkpoints(victim):
        p.write_bytes(b"BILEVEL-CKPT 1 00 5\nbroken")
    with caplog.at_level(logging.INFO, logger="bilevel.app.run.runner"):
        resume_run(victim, quiet=True)
    assert "no usable checkpoint" in caplog.text and "starting over from step 0" in caplog.text
    assert comparable_lines(victim) == comparable_lines(straight)


def test_cli_resume_flags_and_errors(tmp_path, capsys):
    victim = _interrupted(tmp_path, "victim", 12)
    code, out, err = main(["run", "--resume", str(victim), "--quiet"], capsys)
    assert code == 0, err
    assert (victim / "summary.json").exists() and f"wrote {victim}" in out
    # a finished run is not run again
    code, out, err = main(["run", "toy", "--resume", str(victim), "--quiet"], capsys)
    assert code == 0 and len(comparable_lines(victim)) == 9  # steps 0, 4, ..., 28, 30
    code, _, err = main(["run", "--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such directory" in err
    code, _, err = main(["run", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not a `bilevel run` directory" in err
    code, _, err = main(["run"], capsys)
    assert code == 2 and "--resume DIR" in err
    code, _, err = main(["run", "toy", "--checkpoint-every", "-1"], capsys)
    assert code == 2 and ">= 0" in err


def test_checkpoint_every_zero_writes_none_and_default_writes_at_the_end(tmp_path):
    run_task("toy", dict(TOY, outer_steps=7), tmp_path / "off", quiet=True, checkpoint_every=0)
    assert ckpt.list_checkpoints(tmp_path / "off") == []
    run_task("toy", dict(TOY, outer_steps=7), tmp_path / "on", quiet=True)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "on")] == ["step-000007.pt"]
    state = ckpt.load(tmp_path / "on" / "checkpoints" / "step-000007.pt")
    assert {"t", "loop", "rng", "metrics_bytes", "metrics_lines", "guards", "config", "run_options"} <= set(state)
    assert state["metrics_lines"] == 3 and set(state["rng"]) == {"random", "numpy", "torch"}
