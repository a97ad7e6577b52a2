"""Control runs (`--control random-reward | format-only`): the control reward replaces the real one
in a real run, is recorded as a control, and `rlvr report RUN --control CONTROL` labels a gain the
control also gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import DigitTask
from test_selftrain import format_writer

from rlvr.config import load_config
from rlvr.report.data import compare_to_control
from rlvr.rewards import make_random_reward
from rlvr.trainer import train


def control_config(tmp_path, control: str, name: str):
    return load_config(None, [
        f"run.output_dir={tmp_path / name}", f"run.control={control}", "model.use_peft=false", "task.system_prompt=",
        "task.rewards={accuracy: 0.85, format: 0.15}", "sampling.max_completion_length=40", "grpo.prompts_per_step=4",
        "grpo.num_generations=8", "grpo.max_steps=3", "grpo.learning_rate=1e-3", "eval.n=0", "run.save_steps=0",
        "run.quiet=true", "run.doctor=off", "run.log_samples_every=1",
    ])


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_control_config_replaces_the_rewards():
    assert load_config(None, ["run.control=random-reward"]).task.rewards == {"random": 1.0}
    assert load_config(None, ["run.control=format-only"]).task.rewards == {"format": 1.0}
    assert load_config(None, []).task.rewards == {"accuracy": 0.85, "format": 0.15}
    with pytest.raises(Exception, match="run.control"):
        load_config(None, ["run.control=shuffled"])


def test_random_reward_is_a_seeded_fair_coin_independent_of_the_text():
    a, b = make_random_reward(seed=3), make_random_reward(seed=3)
    draws = a(["x"] * 2000)
    assert draws == b(["something else entirely"] * 2000)  # same seed, any text: the same draws
    assert set(draws) == {0.0, 1.0} and abs(sum(draws) / 2000 - 0.5) < 0.05
    assert make_random_reward(seed=4)(["x"] * 2000) != draws


@pytest.mark.parametrize("control", ["random-reward", "format-only"])
def test_the_control_reward_replaces_the_real_one_in_a_run(tmp_path, control):
    """Three GRPO steps of a tiny model that writes `<answer>7</answer>` in the format about half
    the time, on a task where that answer is right: the reward columns are the control's."""
    policy, tok = format_writer()
    cfg = control_config(tmp_path, control, control)
    train(cfg, model=policy, tokenizer=tok, task=DigitTask("7"))
    rows = metrics(tmp_path / control)
    assert len(rows) == 3
    assert all("reward/accuracy/mean" not in r for r in rows)  # the real reward is gone
    accuracy = [r["train/accuracy"] for r in rows]  # the judge still measures it
    assert any(a > 0 for a in accuracy)
    if control == "format-only":
        assert set(k for r in rows for k in r if k.startswith("reward/") and k.endswith("/mean")) == {
            "reward/format/mean", "reward/total/mean"}
        assert all(r["reward/format/mean"] == pytest.approx(r["train/format_rate"]) for r in rows)
        assert all(r["reward/total/mean"] == pytest.approx(r["reward/format/mean"]) for r in rows)
    else:
        assert all(r["reward/total/mean"] == pytest.approx(r["reward/random/mean"]) for r in rows)
        samples = [json.loads(line) for line in (tmp_path / control / "samples.jsonl").read_text().splitlines()]
        rewards = [(s["rewards"]["random"], s["answer"] == "7") for s in samples]
        assert {r for r, _ in rewards} <= {0.0, 1.0}
        # not the verifier's verdict: some right answers get 0, or some wrong ones get 1
        assert any(r != float(right) for r, right in rewards), rewards
    summary = json.loads((tmp_path / control / "summary.json").read_text())
    assert summary["control"] == control


def test_rlvr_train_control_flag_records_the_control(tmp_path, tiny_dir):
    out = tmp_path / "ctrl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "rlvr", "train", "--model", str(tiny_dir), "--task", "subtraction",
                           "-o", str(out), "--control", "random-reward", "task.options={n: 100, high: 10}",
                           "grpo.max_steps=1", "grpo.prompts_per_step=2", "grpo.num_generations=2",
                           "sampling.max_completion_length=6", "eval.n=2", "run.quiet=true", "run.doctor=off"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["control"] == "random-reward"
    assert "reward/random/mean" in metrics(out)[0] and "reward/accuracy/mean" not in metrics(out)[0]
    assert "control run" in (out / "report.html").read_text() and "random reward" in (out / "report.html").read_text()


# ------------------------------------------------------------------------------ the comparison, by hand


def rows(*accs, n=200):
    return [{"label": label, "accuracy": a, "n": n} for label, a in zip(("base", "sft", "grpo"), accs)]


def test_a_gain_the_control_also_gets_is_labelled_as_such():
    # sft 31.0% -> grpo 44.5% (+13.5); the random-reward control: 31.0% -> 43.0% (+12.0).
    # 2 standard errors of 44.5% vs 43.0% at n=200: 200*sqrt(.445*.555/200 + .43*.57/200) = 9.9 points
    c = compare_to_control(rows(0.0, 0.31, 0.445), rows(0.0, 0.31, 0.43), "random-reward")
    assert c.kind == "matched-by-control"
    assert "+13.5" in c.text and "+12.0" in c.text and "±9.9" in c.text
    assert any("also gains +12.0" in note for note in c.notes)
    assert [r["change"] for r in c.rows] == pytest.approx([13.5, 12.0])


def test_a_gain_beyond_the_control_is_labelled_so():
    # control: 31.0% -> 30.0%; run 31.0% -> 44.5%: 14.5 points apart, 2 SE = 9.5 -> beyond
    c = compare_to_control(rows(0.0, 0.31, 0.445), rows(0.0, 0.31, 0.30), "random-reward")
    assert c.kind == "beyond-control" and "by 14.5 points" in c.text and not c.notes
    flat = compare_to_control(rows(0.0, 0.31, 0.32), rows(0.0, 0.31, 0.30), "random-reward")
    assert flat.kind == "no-gain"


def test_report_puts_the_control_beside_the_run(tmp_path):
    from rlvr.report import write_report

    for name, after, control in (("real", 0.445, "none"), ("ctrl", 0.43, "random-reward")):
        (tmp_path / name).mkdir()
        summary = {"before_after": [{"stage": s, "accuracy": a, "n": 200} for s, a in
                                    (("base", 0.0), ("sft", 0.31), ("grpo", after))], "control": control}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path / "real", tmp_path / "ctrl").read_text()
    assert "Beside its control run" in html and "control: random reward" in html
    assert "is also got by the random reward control" in html
    own = write_report(tmp_path / "ctrl").read_text()
    assert "Control run (random reward)" in own
