"""Tracking: JSONL round trip, TensorBoard event files, crash tolerance, resume, tracker errors."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlvr.tracking import Tracker, format_step_line, last_per_step, read_jsonl, scalars


def _tb_scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_round_trip_jsonl_and_tensorboard(tmp_path):
    with Tracker(tmp_path, config={"grpo": {"group_size": 8}}) as tracker:
        for step in (1, 2, 3):
            tracker.log({"reward/total/mean": 0.25 * step, "loss/kl": np.float32(0.5),
                         "optim/lr": torch.tensor(1e-5), "alarm/truncation": "too long"}, step)
        tracker.log_eval({"step": 3, "stage": "grpo", "accuracy": 0.4, "format_rate": 0.9, "n": 200})
        tracker.log_samples([{"prompt": "2+2?", "completion": "<answer>4</answer>", "answer": "4",
                              "ground_truth": "4", "rewards": {"accuracy": 1.0}}], step=3)

    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["reward/total/mean"] for m in metrics] == [0.25, 0.5, 0.75]
    assert metrics[0]["loss/kl"] == 0.5 and metrics[0]["optim/lr"] == pytest.approx(1e-5)  # numpy/torch -> float
    assert metrics[0]["alarm/truncation"] == "too long" and isinstance(metrics[0]["time"], float)
    (evaluation,) = read_jsonl(tmp_path / "eval.jsonl")
    assert evaluation["accuracy"] == 0.4 and evaluation["stage"] == "grpo"
    (sample,) = read_jsonl(tmp_path / "samples.jsonl")
    assert sample["step"] == 3 and sample["rewards"] == {"accuracy": 1.0}
    assert "group_size: 8" in (tmp_path / "config.yaml").read_text()

    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert _tb_scalars(tmp_path, "reward/total/mean") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert _tb_scalars(tmp_path, "eval/grpo/accuracy") == [(3, pytest.approx(0.4))]
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "alarm/truncation" not in acc.Tags()["scalars"]  # strings are not scalars


def test_nan_stays_visible(tmp_path):
    with Tracker(tmp_path) as tracker:
        tracker.log({"loss/policy": float("nan")}, 1)
    assert "NaN" in (tmp_path / "metrics.jsonl").read_text()
    assert math.isnan(read_jsonl(tmp_path / "metrics.jsonl")[0]["loss/policy"])


def test_read_jsonl_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')  # crash mid-write
    assert read_jsonl(path) == [{"step": 1, "a": 1}, {"step": 2, "a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []

    path.write_text('{"step": 1}\n{"step": 2, "a\n{"step": 3}\n')  # corruption in the middle
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_resume_appends_after_repairing_the_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    with Tracker(tmp_path) as tracker:
        tracker.log({"a": 3}, 3)
    records = read_jsonl(path)
    assert [(r["step"], r["a"]) for r in records] == [(1, 1), (2, 2), (3, 3)]
    assert all(line.startswith("{") for line in path.read_text().splitlines())


def test_resume_with_purge_step_drops_the_redone_steps(tmp_path):
    with Tracker(tmp_path) as tracker:
        for step in range(1, 6):
            tracker.log({"r": float(step)}, step)
    # TensorBoard reads event files in name order, and names start with the creation second: a
    # real resume is seconds later; here, wait for the clock to tick so the order is certain
    (first_file,) = tmp_path.glob("events.out.tfevents.*")
    while int(time.time()) <= int(first_file.name.split(".")[3]):
        time.sleep(0.05)
    # checkpoint was at step 3: steps 4 and 5 are redone and give other values
    with Tracker(tmp_path, purge_step=4) as tracker:
        for step in (4, 5):
            tracker.log({"r": 10.0 * step}, step)
    assert [(r["step"], r["r"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert _tb_scalars(tmp_path, "r") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_last_per_step_keeps_the_later_line():
    records = [{"step": 1, "r": 1}, {"step": 2, "r": 2}, {"step": 2, "r": 20}, {"step": 3, "r": 3}]
    assert last_per_step(records) == [{"step": 1, "r": 1}, {"step": 2, "r": 20}, {"step": 3, "r": 3}]


def test_missing_tracker_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail, installed or not
    with pytest.raises(ImportError) as err:
        Tracker(tmp_path / "run", report_to=["wandb"])
    assert str(err.value) == "--report-to wandb: the wandb package is not installed; pip install 'rlvr[wandb]'"
    assert not (tmp_path / "run").exists()  # failed before writing anything
    with pytest.raises(ValueError, match="--report-to neptune: unknown tracker; choose from"):
        Tracker(tmp_path / "run", report_to=["neptune"])


def test_tensorboard_and_none_are_accepted(tmp_path):
    with Tracker(tmp_path, report_to=["tensorboard", "none"]) as tracker:
        tracker.log({"x": 1.0}, 1)
    assert _tb_scalars(tmp_path, "x") == [(1, 1.0)]


def test_non_main_process_writes_nothing(tmp_path):
    with Tracker(tmp_path / "run", is_main=False) as tracker:
        tracker.log({"x": 1.0}, 1)
        tracker.log_eval({"step": 1, "stage": "grpo", "accuracy": 0.5})
        tracker.log_samples([{"step": 1}])
    assert not (tmp_path / "run").exists()


def test_close_twice_is_harmless(tmp_path):
    tracker = Tracker(tmp_path)
    tracker.log({"x": 1.0}, 1)
    tracker.close()
    tracker.close()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_scalars_skips_non_numeric():
    assert scalars({"a": 1, "b": 2.5, "c": "s", "d": None, "e": True, "f": [1], "g": np.int64(3)}) == {
        "a": 1.0, "b": 2.5, "g": 3.0}


def test_format_step_line():
    metrics = {"reward/total/mean": 0.41, "reward/total/std": 0.3, "train/accuracy": 0.35,
               "signal/zero_std_groups": 0.25, "completion/length_mean": 87.4, "completion/length_max": 256,
               "completion/truncated_frac": 0.03, "loss/kl": 0.00123, "throughput/generate_tok_s": 1234.5}
    assert format_step_line(metrics, 12, 200) == (
        "step  12/200 | reward 0.410±0.300 | acc 35% | zero-signal 25% | len 87 (max 256, trunc 3.0%)"
        " | kl 0.00123 | 1,234 tok/s"
    )
    # missing keys are left out; an alarm is shown
    assert format_step_line({"alarm/truncation": "80% truncated"}, 3, 10) == "step  3/10 | ALARM truncation"


def test_wandb_offline_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Tracker(tmp_path, report_to=["wandb"], config={"a": 1}) as tracker:
        tracker.log({"reward/total/mean": 0.5, "alarm/x": "text"}, 1)
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
