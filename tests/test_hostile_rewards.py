"""Rewards as a hostile user writes them (issue 21 items 3, 4, 9, 10a; issue 17 item 2).

Each test failed before its fix: non-finite reward values aborted training (or were silently 0,
uncounted); a timed-out reward's subprocesses survived it and a hanging reward cost (n + 1)
time-outs per step; a reward raising on everything trained on nothing with exit 0; reasoning-gym's
partial credit counted as accuracy; "4 2" parsed as 42.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.alarms import Alarms
from rlvr.algorithms.advantages import group_advantages
from rlvr.buffer import Rollout
from rlvr.config import load_config
from rlvr.doctor import (
    Finding,
    SignalStats,
    assess,
    hack_finding,
    score_trivial_answers,
)
from rlvr.rewards import (
    BROKEN_AFTER_CALLS,
    TIMEOUTS_TO_STOP,
    RewardFunctionError,
    format_reward,
    load_reward,
    score,
    trusted,
)
from rlvr.rollout import Experience, experience_metrics
from rlvr.tasks import get_task
from rlvr.tasks.base import parse_number
from rlvr.tasks.custom import match_answer

GOOD = "<think>\nx\n</think>\n<answer>1</answer>"


def user_reward(tmp_path: Path, source: str, name: str):
    """A user's reward function from a file, as `rlvr train` loads it (untrusted: runs forked)."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return load_reward(f"{path}:{name}")


# ---------------------------------------------------------------- item 3: non-finite values


HOSTILE_VALUES = """
import math
def hostile(completions, **kw):
    table = {"inf": math.inf, "-inf": -math.inf, "big": 1e39, "nan": math.nan, "none": None,
             "huge": 10**400, "one": 1.0}
    return [table[c.split("|")[0]] for c in completions]
"""


def test_nonfinite_values_are_masked_out_of_the_total(tmp_path):
    hostile = user_reward(tmp_path, HOSTILE_VALUES, "hostile")
    kinds = ["inf", "-inf", "big", "nan", "none", "huge", "one"]
    completions = [f"{k}|{GOOD}" for k in kinds]
    result = score([("hostile", hostile, 2.0), ("format", format_reward, 0.5)], completions, {}, timeout_s=10)
    # format: 1 for all (lenient: a closed think block, then an answer); hostile masked on six
    assert [math.isnan(v) for v in result.parts["hostile"]] == [True] * 6 + [False]
    assert result.total == [0.5] * 6 + [2.5]  # 0.5 * 1 (+ 2.0 * 1.0 on the last): masked parts left out
    assert result.errors == {"hostile": 0, "format": 0}
    # the trainer's tensor of totals is finite, so advantages can be computed (before: ValueError
    # "rewards are not finite ... at indices [0]", naming no reward)
    adv = group_advantages(torch.tensor(result.total[1:], dtype=torch.float32), 3)  # [6]
    assert torch.isfinite(adv).all()


def test_nonfinite_values_are_counted_per_reward_in_the_metrics():
    @trusted
    def sometimes(completions, **kw):
        return [None if c == "none" else math.inf if c == "inf" else 1.0 for c in completions]

    completions = ["none", "inf", "ok", "ok"]
    result = score([("sometimes", sometimes, 1.0), ("format", format_reward, 1.0)], completions, {})
    exp = Experience(rollouts=[Rollout([1], [2, 3], [0.0, 0.0], 0.0, False) for _ in completions], examples=[],
                     completions=completions, rewards=result, correct=[0.0] * 4, formatted=[0.0] * 4,
                     answers=[None] * 4)
    m = experience_metrics(exp, 2)
    assert m["reward/sometimes/nonfinite"] == 2  # None and inf
    assert m["reward/sometimes/mean"] == 1.0  # over the two completions it scored
    assert "reward/format/nonfinite" not in m  # logged only when non-zero


def test_a_reward_that_keeps_giving_nonfinite_values_raises_an_alarm():
    alarms = Alarms(every=10)
    fired = []
    for step in range(1, 4):
        fired += alarms.update({"reward/total/mean": 0.5, "reward/hostile/nonfinite": 3}, step)
    (alarm,) = [a for a in fired if a.name == "reward_nonfinite"]
    assert alarm.metric == "reward/hostile/nonfinite" and "hostile" in alarm.message
    # once, or on and off, is not "keeps giving"
    quiet = Alarms(every=10)
    metrics = [{"reward/hostile/nonfinite": 3}, {}, {"reward/hostile/nonfinite": 3}, {}]
    assert not [a for step, m in enumerate(metrics, 1) for a in quiet.update(m, step) if a.name == "reward_nonfinite"]


@pytest.mark.parametrize("weight", [math.nan, math.inf, 1e39, "heavy"])
def test_bad_weights_are_refused_naming_the_reward(weight):
    with pytest.raises(ValueError, match="weight of reward 'format'"):
        score([("format", format_reward, weight)], [GOOD], {})


# ---------------------------------------------------------------- item 4: orphans and time-outs


def _alive(pid: int) -> bool:
    """True when the process exists and is not a zombie (a killed orphan waits for PID 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


SPAWNER = """
import subprocess, time
def spawn_and_hang(completions, **kw):
    with open({calls!r}, "a") as f:
        f.write("call\\n")
    children = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    with open({pids!r}, "a") as f:
        f.write("".join(f"{{p.pid}}\\n" for p in children))
    time.sleep(1000)
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_timed_out_reward_leaves_no_subprocess_and_costs_one_time_out(tmp_path):
    calls, pids = tmp_path / "calls.txt", tmp_path / "pids.txt"
    fn = user_reward(tmp_path, SPAWNER.format(calls=str(calls), pids=str(pids)), "spawn_and_hang")
    result = score([("spawn_and_hang", fn, 1.0)], ["a", "b", "c", "d"], {}, timeout_s=1.0)
    assert result.parts["spawn_and_hang"] == [0.0] * 4 and result.errors == {"spawn_and_hang": 4}
    # the batch call timed out once and was not retried per completion (before: 1 + 4 calls)
    assert calls.read_text().splitlines() == ["call"]
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 3
    assert [pid for pid in children if _alive(pid)] == []  # before: 3 `sleep 300` reparented to PID 1
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    running = [line for line in ps.splitlines() if int(line.split()[0]) in children and "defunct" not in line]
    assert running == []  # (killed orphans may show as <defunct> until PID 1 reaps them)


HANG = """
import time
def hang(completions, **kw):
    if completions[0] == "fast":
        return [1.0 for _ in completions]
    time.sleep(1000)
"""


@pytest.mark.timeout(120)
def test_time_outs_in_a_row_stop_the_run_naming_the_function(tmp_path):
    fn = user_reward(tmp_path, HANG, "hang")
    score([("hang", fn, 1.0)], ["slow"], {}, timeout_s=0.3)
    score([("hang", fn, 1.0)], ["slow"], {}, timeout_s=0.3)
    assert score([("hang", fn, 1.0)], ["fast"], {}, timeout_s=5).parts["hang"] == [1.0]  # resets the count
    for _ in range(TIMEOUTS_TO_STOP - 1):
        score([("hang", fn, 1.0)], ["slow"], {}, timeout_s=0.3)
    with pytest.raises(RewardFunctionError, match=r"reward function 'hang' timed out on 3 calls in a row"):
        score([("hang", fn, 1.0)], ["slow"], {}, timeout_s=0.3)


# ---------------------------------------------------------------- issue 17 item 2: broken rewards


ALWAYS_RAISES = """
def always_raises(completions, **kw):
    return [1 / 0 for _ in completions]
"""


def test_a_reward_raising_on_every_completion_stops_naming_it_and_its_error(tmp_path):
    fn = user_reward(tmp_path, ALWAYS_RAISES, "always_raises")
    first = score([("always_raises", fn, 1.0)], ["a", "b"], {})  # the first call: contained
    assert first.errors == {"always_raises": 2}
    with pytest.raises(RewardFunctionError, match=r"'always_raises' raised on every completion .*ZeroDivisionError"):
        for _ in range(BROKEN_AFTER_CALLS - 1):
            score([("always_raises", fn, 1.0)], ["a", "b"], {})


def test_occasional_failures_keep_their_containment():
    @trusted
    def fragile(completions, **kw):
        return [1.0 / (len(c) - 3) for c in completions]  # "abc" divides by zero

    for _ in range(5):  # fails on one completion every call: never stops the run
        result = score([("fragile", fragile, 1.0)], ["abcd", "abc"], {})
        assert result.parts["fragile"] == [1.0, 0.0] and result.errors == {"fragile": 1}
    for _ in range(5):  # fails on every completion, but only after it once worked: contained
        assert score([("fragile", fragile, 1.0)], ["abc", "abc"], {}).errors == {"fragile": 2}


def test_the_doctor_calls_a_reward_failing_everywhere_fatal():
    s = SignalStats(prompts=2, generations=4, pass_at_g=0.0, zero_signal=1.0, all_wrong=1.0, all_right=0.0,
                    mixed_accuracy=0.0, accuracy=0.0, format_rate=0.0, reward_mean=0.0, truncated=0.0,
                    truncated_reward_mean=0.0, truncated_reward_spread=0.0, length_mean=5, length_p50=5,
                    length_p90=5, length_max=5, max_prompt_len=5, reward_errors={"always_raises": 8})
    found = assess(s, None, load_config(None, []))
    assert any(f.severity == "fatal" and "always_raises failed on every one" in f.message for f in found)


@pytest.mark.timeout(600)
def test_rlvr_train_with_an_always_raising_reward_exits_non_zero_naming_it(tmp_path, tiny_dir):
    path = tmp_path / "broken.py"
    path.write_text(ALWAYS_RAISES)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr", "train", "--model", str(tiny_dir), "--task", "subtraction",
         "-o", str(tmp_path / "run"), "task.options={n: 100, high: 10}", f"task.rewards={{{path}:always_raises: 1.0}}",
         "grpo.max_steps=3", "grpo.prompts_per_step=2", "grpo.num_generations=2", "sampling.max_completion_length=4",
         "eval.n=0", "run.doctor=off", "run.quiet=true"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RewardFunctionError" in proc.stderr and "'always_raises'" in proc.stderr
    assert "ZeroDivisionError" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- item 9: gameable scores


def test_reasoning_gym_accuracy_counts_only_fully_right_answers():
    task = get_task("rg:syllogism", n=50, n_test=10)
    examples = task.train_examples()
    credit = [task.partial_credit("YesNo", ex) for ex in examples]
    assert sum(credit) / len(credit) >= 0.4  # reasoning-gym pays the hedge ~half
    assert [task.verify("YesNo", ex) for ex in examples] == [0.0] * len(examples)  # before: the same ~0.5
    right = [ex for ex in examples if ex.answer]
    assert all(task.verify(ex.answer, ex) == 1.0 for ex in right)


def test_the_partial_credit_reward_is_reported_apart_from_accuracy():
    task = get_task("rg:syllogism", n=20, n_test=10)
    ex = task.train_examples()[0]
    cfg = load_config(None, ["task.rewards={accuracy: 1.0, partial_credit: 0.5}"])
    from rlvr.rollout import PromptFormat, build_reward_fns, score_texts

    fns = build_reward_fns(task, cfg.task.rewards)
    result = score_texts(fns, task, [ex], ["<think>\n</think>\n<answer>YesNo</answer>"], PromptFormat(), 5.0, False)
    assert result.parts["accuracy"] == [0.0] and 0.0 < result.parts["partial_credit"][0] < 1.0


def test_the_doctor_names_a_premise_copy_on_propositional_logic():
    task = get_task("rg:propositional_logic", n=100, n_test=10)
    scores = score_trivial_answers(task, load_config(None, ["task.name=rg:propositional_logic"]), n=50)
    premise = scores["a copy of the first premise (numbered line)"]["accuracy"]
    assert premise >= 0.5  # measured 0.58: copying a premise is a "valid conclusion"
    finding = hack_finding(scores, task.name)
    assert finding.severity == "warn" and "first premise" in finding.message and finding.fix


def test_the_doctor_names_a_hedge_and_the_majority_answer_on_syllogism():
    task = get_task("rg:syllogism", n=100, n_test=10)
    cfg = load_config(None, ["task.name=rg:syllogism", "task.rewards={accuracy: 1.0, partial_credit: 1.0}"])
    finding = hack_finding(score_trivial_answers(task, cfg, n=50), task.name)
    assert finding.severity == "warn"
    assert "the hedge 'YesNo' scores partial_credit" in finding.message
    assert "the most common train answer" in finding.message


def test_no_trivial_answer_works_on_subtraction():
    task = get_task("subtraction", n=200)
    scores = score_trivial_answers(task, load_config(None, []), n=50)
    assert max(v for row in scores.values() for v in row.values()) == 0.0
    finding = hack_finding(scores, task.name)
    assert finding.severity == "ok" and isinstance(finding, Finding)


# ---------------------------------------------------------------- item 10a: numbers


@pytest.mark.parametrize("text", ["4 2", "1,2", "12,34", "1,2345", "1 234", "4 2.5"])
def test_digits_split_by_a_space_or_a_stray_comma_are_not_a_number(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("text, value", [("1,234", 1234), ("12,345,678", 12345678), ("-1,234.5", -1234.5),
                                         ("$1,234.", 1234), ("- 5", -5), ("$ 5", 5), ("$18$", 18)])
def test_thousands_separators_in_groups_of_three_are_removed(text, value):
    assert parse_number(text) == value


def test_numeric_verifiers_refuse_split_digits():
    assert match_answer("4 2", "42") == 0.0 and match_answer("1,2", "12") == 0.0
    assert match_answer("1,234", "1234") == 1.0
    task = get_task("subtraction", n=20)
    ex = next(e for e in task.train_examples() if len(e.answer.lstrip("-")) == 2)
    digits = ex.answer.lstrip("-")
    assert task.verify(ex.answer.replace(digits, f"{digits[0]} {digits[1]}"), ex) == 0.0
