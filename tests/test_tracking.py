"""Tracking: JSONL round trip, TensorBoard event files, crash tolerance, resume, tracker errors, and
a real training run logged to trackio (offline) and read back from trackio's own store."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from accelerate.tracking import GeneralTracker
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
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


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow"])
def test_missing_tracker_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # makes `import <name>` fail, installed or not
    with pytest.raises(ImportError) as err:
        Tracker(tmp_path / "run", report_to=[name])
    assert str(err.value) == f"--report-to {name}: the {name} package is not installed; pip install 'rlvr[{name}]'"
    assert not (tmp_path / "run").exists()  # failed before writing anything
    with pytest.raises(ValueError, match="--report-to neptune: unknown tracker; choose from"):
        Tracker(tmp_path / "run", report_to=["neptune"])


def test_report_to_reads_as_in_trl(monkeypatch):
    from rlvr.tracking import _wanted

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert _wanted("trackio") == ["trackio"]  # a single name, as TRL's report_to takes it
    assert _wanted(["none"]) == [] and _wanted(["tensorboard", "wandb", "wandb"]) == ["wandb"]
    assert _wanted(["all"]) == ["trackio"]  # every installed one (trackio is, in the dev extra)
    monkeypatch.setitem(sys.modules, "trackio", None)
    assert _wanted("all") == []


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


class _DropsAtStep2(GeneralTracker):
    """A custom accelerate tracker whose server goes away at step 2."""

    name = "flaky"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.started, self.steps = False, []

    @property
    def tracker(self):
        return self

    def start(self):
        self.started = True

    def log(self, values, step=None, **kwargs):
        if step == 2:
            raise ConnectionError("server went away")
        self.steps.append(step)


def test_a_failing_tracker_is_warned_about_once_and_the_run_goes_on(tmp_path, caplog):
    flaky = _DropsAtStep2()
    with caplog.at_level(logging.WARNING, logger="rlvr.tracking"), Tracker(tmp_path, report_to=[flaky]) as tracker:
        for step in (1, 2, 3):
            tracker.log({"r": float(step)}, step)
        tracker.log_eval({"step": 3, "stage": "grpo", "accuracy": 0.5})
    assert flaky.started and flaky.steps == [1]  # dropped after its failure
    assert [r["r"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 2.0, 3.0]
    assert len(read_jsonl(tmp_path / "eval.jsonl")) == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tracker flaky failed in log (ConnectionError: server went away)" in warning
    assert _tb_scalars(tmp_path, "r") == [(1, 1.0), (2, 2.0), (3, 3.0)]  # the other sinks go on


# A real training run (tiny model, 2 steps) with report_to=[trackio], in its own process: trackio
# reads TRACKIO_DIR when imported, and the process's sockets refuse to connect (and record the
# attempt), so trackio runs offline. Then it reads trackio's local store back.
TRAIN_WITH_TRACKIO = """
import json, socket, sys
attempts = []
def refuse(sock, address):
    attempts.append(repr(address))
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse

from conftest import ROOT, DigitTask, char_model
from rlvr.config import load_config
from rlvr.trainer import train

run_dir, dump = sys.argv[1], sys.argv[2]
cfg = load_config(None, [
    f"run.output_dir={run_dir}", "model.use_peft=false", "task.system_prompt=",
    f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:digit_reward: 1.0}}",
    "sampling.max_completion_length=8", "sampling.stop_at_answer=false", "grpo.prompts_per_step=2",
    "grpo.num_generations=4", "grpo.max_steps=2", "eval.on_start=false", "eval.n=4", "run.save_steps=0",
    "run.quiet=true", "run.doctor=off", "run.log_samples_every=1", "run.report_to=[trackio]",
])
model, tokenizer = char_model(seed=0)
train(cfg, model=model, tokenizer=tokenizer, task=DigitTask("7"), write_report=False)

from trackio.sqlite_storage import SQLiteStorage  # the store trackio's dashboard reads
runs = SQLiteStorage.get_runs("rlvr-test")
with open(dump, "w") as f:
    json.dump({"runs": runs, "logs": SQLiteStorage.get_logs("rlvr-test", "run"),
               "config": SQLiteStorage.get_run_config("rlvr-test", "run"), "attempts": attempts}, f, default=str)
"""


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_a_training_run_logs_to_trackio_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKIO_", "SPACE_", "WANDB_", "MLFLOW_"))}
    env.update(TRACKIO_DIR=str(tmp_path / "trackio"), TRACKIO_PROJECT="rlvr-test", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
    run_dir, dump = tmp_path / "run", tmp_path / "trackio.json"
    done = subprocess.run([sys.executable, "-c", TRAIN_WITH_TRACKIO, str(run_dir), str(dump)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Trackio" not in done.stdout  # trackio's messages go to stderr (stdout may carry JSON lines)
    store = json.loads(dump.read_text())
    assert store["attempts"] == [] and store["runs"] == ["run"]  # local, named after the run directory
    assert store["config"]["grpo"]["max_steps"] == 2

    logs = store["logs"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for record in metrics:
        (logged,) = [e for e in logs if e["step"] == record["step"] and "reward/total/mean" in e]
        expected = scalars({k: v for k, v in record.items() if k not in ("step", "time")})
        assert expected and set(expected) <= set(logged)
        assert all(_same(logged[k], v) for k, v in expected.items()), (logged, expected)
    (evaluation,) = read_jsonl(run_dir / "eval.jsonl")
    (logged,) = [e for e in logs if "eval/after/accuracy" in e]
    assert logged["step"] == 2 and logged["eval/after/accuracy"] == evaluation["accuracy"]

    samples = read_jsonl(run_dir / "samples.jsonl")
    tables = {e["step"]: e["samples"] for e in logs if "samples" in e}
    assert sorted(tables) == [1, 2]
    for step, table in tables.items():
        assert table["_type"] == "trackio.table"
        expected = [s for s in samples if s["step"] == step]
        assert len(expected) == len(table["_value"]) > 0
        for row, sample in zip(table["_value"], expected):
            assert row["prompt"] == sample["prompt"] and row["completion"] == sample["completion"]
            assert row["rewards/total"] == sample["rewards"]["total"]
            assert row["rewards/digit_reward"] == sample["rewards"]["digit_reward"]
