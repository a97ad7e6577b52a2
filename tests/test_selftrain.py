"""The self warm-up (`sft.source: self`, rlvr.selftrain): only completions the verifier accepts AND
that have the format are kept and fine-tuned on; the rounds are recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import DigitTask, SecretTask, char_model

from rlvr.config import load_config
from rlvr.demos import Demo
from rlvr.judge import Verdict, judge
from rlvr.rollout import PromptFormat
from rlvr.selftrain import (Candidate, accepts, few_shot_examples, few_shot_prompt, level_rounds, question_rounds,
                            select_accepted, shot_from_answer, trim_after_answer)
from rlvr.tasks.base import Example

import torch


class AcceptAnything(DigitTask):
    """The verifier accepts every answer (even none): only the format decides what is kept."""

    name = "accept-anything"

    def verify(self, answer, example):
        return 1.0


def format_writer(seed: int = 0):
    """A tiny char model fine-tuned (a few seconds) until it writes `<think>\\nok\\n</think>\\n<answer>7</answer>`
    often but not always: sampled at temperature 1 it gives formatted and broken completions."""
    from rlvr.models import prepare_policy
    from rlvr.sft import sft_train

    model, tok = char_model(seed)
    cfg = load_config(None, ["run.quiet=true", "model.use_peft=false", "sft.batch_size=8", "sft.learning_rate=1e-2",
                             "sft.epochs=2", "sft.warmup_ratio=0", f"run.seed={seed}"])
    policy = prepare_policy(model, cfg.model)
    demos = [Demo("say 7", "<think>\nok\n</think>\n<answer>7</answer>", "7")] * 320
    sft_train(policy, tok, DigitTask(), demos, cfg, run_dir=Path("."))
    return policy, tok


# ------------------------------------------------------------------------------ the rule, by hand


def v(correct: float, formatted: bool) -> Verdict:
    return Verdict("x", correct, formatted)


def test_accept_rule_needs_both_the_verifier_and_the_format():
    assert accepts(v(1.0, True))
    assert not accepts(v(1.0, False))  # right answer, no format
    assert not accepts(v(0.0, True))  # format, wrong answer
    assert not accepts(v(0.5, True))  # partial credit is not acceptance


def test_select_accepted_dedupes_and_caps_per_question():
    ex = Example("q", "a")
    ok = "<think>\nt\n</think>\n<answer>a</answer>"
    cands = [Candidate(0, ex, ok, v(1.0, True)),
             Candidate(0, ex, ok + "\n<junk", v(1.0, True)),  # the same once trimmed after the answer
             Candidate(0, ex, ok.replace("t", "u"), v(1.0, True)),
             Candidate(0, ex, ok.replace("t", "w"), v(1.0, True)),  # a third distinct one: over the cap of 2
             Candidate(1, ex, ok, v(0.0, True)),  # wrong
             Candidate(1, ex, "a", v(1.0, False)),  # no format
             Candidate(2, ex, ok, v(1.0, True))]
    kept = select_accepted(cands, max_per_question=2)
    assert [(c.question, c.text) for c in kept] == [(0, ok), (0, ok.replace("t", "u")), (2, ok)]
    assert trim_after_answer(ok + "\n<junk") == ok


def test_few_shot_prompt_shows_the_examples_then_the_question(smol_tokenizer):
    task = DigitTask("7")
    shots = few_shot_examples(task, [Example("say 3", "3"), Example("say 4", "4")], 2, "auto")
    assert shots[0][1] == shot_from_answer(Example("say 3", "3"))  # no worked solution: built from the answer
    assert judge(task, shots[0][1], Example("say 3", "3")).formatted
    question = Example("say 7", "7")
    plain = few_shot_prompt(None, task, PromptFormat(chat=False, prefill="<think>"), shots, question)
    assert plain == (f"Question: say 3\nAnswer: {shots[0][1]}\n\nQuestion: say 4\nAnswer: {shots[1][1]}\n\n"
                     "Question: say 7\nAnswer: <think>")
    chat = few_shot_prompt(smol_tokenizer, task, PromptFormat(chat=True), shots, question)
    assert chat.index("say 3") < chat.index("<answer>3</answer>") < chat.index("say 4") < chat.index("say 7")
    assert chat.endswith("<|im_start|>assistant\n")


def test_worked_solutions_are_the_shots_when_the_task_has_them():
    from rlvr.tasks.subtraction import SubtractionTask

    task = SubtractionTask(n=50, high=10)
    ex = task.train_examples()[0]
    (shot, completion), = few_shot_examples(task, [ex], 1, "auto")
    assert completion == task.demonstration(ex)
    (_, built), = few_shot_examples(task, [ex], 1, "answers")
    assert built == shot_from_answer(ex)


def test_a_bad_shot_source_is_a_config_error():
    from rlvr.config import ConfigError

    with pytest.raises(ConfigError, match="sft.self_shot_source"):
        load_config(None, ["sft.source=self", "sft.self_shot_source=teacher"])


def test_shot_examples_are_never_round_questions():
    examples = [Example(f"q{i}", str(i)) for i in range(20)]
    shots, rounds = question_rounds(examples, 3, 5, 3, torch.Generator().manual_seed(0))
    asked = [e.question for r in rounds for e in r]
    assert len(shots) == 3 and not {e.question for e in shots} & set(asked)
    assert len(asked) == 15 == len(set(asked))  # fresh questions every round


def test_self_levels_draw_each_rounds_questions_at_its_level_never_a_held_out_one():
    """sft.self_levels=[1, 2]: countdown round 1 asks two-number problems, round 2 (and after) three;
    reproducible, and never one of the held-out questions."""
    from rlvr.tasks import get_task

    task = get_task("countdown", num_numbers=3, n=300, n_test=200)
    rounds = level_rounds(task, [1, 2], 20, 3, seed=0)
    counts = [{len(ex.metadata["nums"]) for ex in r} for r in rounds]
    assert counts == [{2}, {3}, {3}]
    assert [len(r) for r in rounds] == [20, 20, 20]
    assert all(task.verify(ex.metadata["solution"], ex) == 1.0 for r in rounds for ex in r if ex.metadata.get("solution"))
    assert not {ex.question for r in rounds for ex in r} & {ex.question for ex in task.test_examples()}
    assert [ex.question for ex in level_rounds(task, [1, 2], 20, 3, seed=0)[1]] == [ex.question for ex in rounds[1]]
    with pytest.raises(ValueError, match="sft.self_levels"):
        level_rounds(AcceptAnything(), [1], 2, 1, seed=0)
    with pytest.raises(ValueError, match=r"levels 1 to .*got \[0\]"):
        level_rounds(task, [1, 0], 2, 1, seed=0)


# ------------------------------------------------------------------------------ a real run


def test_self_warm_up_keeps_only_verified_formatted_completions(tmp_path):
    """A tiny model that writes the format about half the time, a verifier that accepts anything:
    what is kept (and fine-tuned on) is exactly the formatted completions, deduplicated."""
    from rlvr.sft import run_sft

    policy, tok = format_writer()
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'self'}", "run.quiet=true", "model.use_peft=false", "task.system_prompt=",
        "sft.source=self", "sft.self_rounds=2", "sft.self_questions=6", "sft.self_samples=8", "sft.self_shots=0",
        "sft.self_max_per_question=8", "sft.self_eval_n=4", "sft.batch_size=4", "sft.learning_rate=1e-3",
        "sampling.max_completion_length=40", "eval.n=0",
    ])
    result, _ = run_sft(cfg, model=policy, tokenizer=tok, task=AcceptAnything())
    task = AcceptAnything()
    total_kept = 0
    for r in (1, 2):
        records = [json.loads(line) for line in (tmp_path / "self" / "self" / f"round-{r}.jsonl").read_text().splitlines()]
        assert len(records) == 6 * 8
        for rec in records:  # the judge's verdict, recomputed here, agrees with what was kept
            verdict = judge(task, rec["completion"], Example("say 7", "7"))
            assert rec["accepted"] == (verdict.formatted and verdict.correct == 1.0)
            assert not rec["kept"] or rec["accepted"]
        formatted = [rec for rec in records if rec["format"]]
        assert 0 < len(formatted) < len(records), "the test needs both kinds of completion"
        distinct = {(rec["question"], trim_after_answer(rec["completion"]).strip()) for rec in formatted}
        assert sum(rec["kept"] for rec in records) == len(distinct)
        total_kept += len(distinct)
    summary = json.loads((tmp_path / "self" / "sft_summary.json").read_text())
    rounds = summary["self_rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["questions"] == 6 and r["samples"] == 48 for r in rounds)
    assert all(r["accepted"] == r["formatted"] for r in rounds)  # the verifier accepts everything
    assert all(0 <= r["accuracy"] <= 1 and r["eval_n"] == 4 for r in rounds)  # evaluated after each round
    # fine-tuned on exactly the kept completions: ceil(kept / batch) steps per round
    assert result.num_demos == summary["num_demos"] == total_kept
    assert result.steps == sum(math.ceil(r["kept"] / 4) for r in rounds)
    evals = [json.loads(line) for line in (tmp_path / "self" / "eval.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals] == ["self round 1", "self round 2"]
    assert [e["self/accepted"] for e in evals] == [r["accepted"] for r in rounds]  # the counts ride on the eval row
    from rlvr.report import write_report

    html = write_report(tmp_path / "self").read_text()
    assert "Self warm-up (no demonstrations)" in html
    assert f"<td>{rounds[1]['accepted']}</td><td>{rounds[1]['solved']}</td><td>{rounds[1]['kept']}</td>" in html


def test_no_accepted_completion_is_a_clear_error(tmp_path):
    """A random model never writes the format: the warm-up stops naming what to change."""
    from rlvr.selftrain import SelfWarmUpError
    from rlvr.sft import run_sft

    model, tok = char_model()
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'self'}", "run.quiet=true", "model.use_peft=false", "sft.source=self",
        "sft.self_rounds=1", "sft.self_questions=2", "sft.self_samples=2", "sft.self_shots=1", "sft.self_eval_n=0",
        "sampling.max_completion_length=8", "eval.n=0",
    ])
    with pytest.raises(SelfWarmUpError, match="sft.self_samples"):
        run_sft(cfg, model=model, tokenizer=tok, task=AcceptAnything())


def test_check_arithmetic_drops_right_answers_with_made_up_steps():
    ex = Example("Using [43, 51, 46] make 38", "38")
    made_up = "<think>\n43 - 51 = 11, and 11 + 46 = 38.\n</think>\n<answer>43 - 51 + 46</answer>"
    sound = "<think>\n43 - 51 = -8, and -8 + 46 = 38.\n</think>\n<answer>43 - 51 + 46</answer>"
    unchecked = "<think>\nadd and subtract\n</think>\n<answer>43 - 51 + 46</answer>"
    cands = [Candidate(0, ex, made_up, v(1.0, True)), Candidate(0, ex, sound, v(1.0, True)),
             Candidate(1, ex, unchecked, v(1.0, True))]
    assert [c.text for c in select_accepted(cands, 2)] == [made_up, sound, unchecked]
    assert [c.text for c in select_accepted(cands, 2, check_arithmetic=True)] == [sound, unchecked]
    from rlvr.selftrain import round_record

    rec = round_record(1, cands, select_accepted(cands, 2, check_arithmetic=True), 2)
    assert (rec["accepted"], rec["false_arithmetic"], rec["kept"]) == (3, 1, 2)


# ------------------------------------------------------------------------------ multi-turn tasks


def test_trajectory_shots_are_shown_as_episodes_are(smol_tokenizer):
    """A tool task's shots are trajectories (call, result, answer): in the chat prompt as assistant and
    tool turns after the tools' description; in the plain one as an episode renders a tool result."""
    from rlvr.tasks import get_task

    task = get_task("countdown", num_numbers=3, n=40, n_test=10, tools=True)
    pool = task.train_examples()
    shots = few_shot_examples(task, pool[:2], 2, "auto", multi_turn=True)
    assert all(isinstance(c, list) and [m["role"] for m in c] == ["assistant", "tool", "assistant"] for _, c in shots)
    assert few_shot_examples(task, pool[:1], 1, "auto")[0][1] == shot_from_answer(pool[0])  # single-turn: no trajectory
    chat = few_shot_prompt(smol_tokenizer, task, PromptFormat(), shots, pool[5])
    result = shots[0][1][1]["content"]
    assert chat.index("<tools>") < chat.index(pool[0].question) < chat.index(f"<|im_start|>tool\n{result}<|im_end|>")
    assert chat.index(shots[1][1][2]["content"]) < chat.index(pool[5].question) and chat.endswith("<|im_start|>assistant\n")
    plain = few_shot_prompt(None, task, PromptFormat(chat=False), shots, pool[5])
    assert f"</tool_call>\nResult: {result}\nAnswer: <think>" in plain
    assert plain.endswith(f"Question: {pool[5].question}\nAnswer: ")


def test_an_episode_cut_by_a_limit_is_never_kept():
    ex = Example("q", "7")
    done = [{"role": "assistant", "content": "?"}, {"role": "tool", "content": "7"},
            {"role": "assistant", "content": "<think>\nok\n</think>\n<answer>7</answer>"}]
    cut = Candidate(0, ex, done[-1]["content"], v(1.0, True), done, limit="turns")
    same = Candidate(0, ex, done[-1]["content"] + " junk", v(1.0, True), [*done[:2], {**done[2], "content": done[2]["content"] + " junk"}])
    kept = select_accepted([cut, same, Candidate(0, ex, done[-1]["content"], v(1.0, True), done)], 4)
    assert kept == [same]  # the limit-cut one dropped; the third is `same` once trimmed after the answer
    from rlvr.selftrain import to_demos

    (demo,) = to_demos(kept)
    assert demo.messages == done and demo.completion == done[-1]["content"]


class PeekTask(SecretTask):
    """The multi-turn toy (a "?" calls `peek`, which tells the secret) with a verifier that accepts
    any answer, so the format alone decides what is kept."""

    def verify(self, answer, example):
        return 1.0


def test_self_warm_up_of_a_tool_task_keeps_whole_verified_episodes(tmp_path):
    """A tiny model taught to call the tool ("?") and then write the format, sampled at temperature 1:
    the warm-up samples episodes (the tool really runs: its message is the example's secret), keeps
    the formatted ones not cut by a limit, and fine-tunes on them as trajectories."""
    from rlvr.models import prepare_policy
    from rlvr.sft import run_sft, sft_train

    model, tok = char_model(0)
    base = ["run.quiet=true", "model.use_peft=false", "task.system_prompt=", "sft.batch_size=8", "run.seed=0",
            "sft.warmup_ratio=0", "task.max_tool_calling_iterations=2", "sampling.max_completion_length=80"]
    policy = prepare_policy(model, load_config(None, base).model)
    teach = [Demo("s", "<think>\nok\n</think>\n<answer>7</answer>", d, {}, "procedural",
                  messages=[{"role": "assistant", "content": "?"}, {"role": "tool", "content": d},
                            {"role": "assistant", "content": "<think>\nok\n</think>\n<answer>7</answer>"}])
             for d in "3579" * 80]
    sft_train(policy, tok, PeekTask(), teach, load_config(None, [*base, "sft.learning_rate=1e-2", "sft.epochs=3"]),
              run_dir=Path("."))
    cfg = load_config(None, [*base, f"run.output_dir={tmp_path / 'self'}", "sft.source=self", "sft.self_rounds=1",
                             "sft.self_questions=6", "sft.self_samples=8", "sft.self_shots=0",
                             "sft.self_max_per_question=8", "sft.self_eval_n=0", "sft.learning_rate=1e-3", "eval.n=0"])
    result, _ = run_sft(cfg, model=policy, tokenizer=tok, task=PeekTask())
    rows = [json.loads(line) for line in (tmp_path / "self" / "self" / "round-1.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and all("conversation" in r for r in rows)
    called = [r for r in rows if r["tool_calls"]]
    assert called, "the test needs episodes that call the tool"
    for r in called:  # the environment ran: each tool message is the example's secret
        tool_messages = [m["content"] for m in r["conversation"] if m["role"] == "tool"]
        assert tool_messages and set(tool_messages) == {r["ground_truth"]}
    kept = [r for r in rows if r["kept"]]
    assert kept and all(r["format"] and r["limit"] is None for r in kept)
    assert any(r["tool_calls"] for r in kept), "some kept episode is a trajectory with the tool in it"
    assert 0 < sum(r["format"] and r["limit"] is None for r in rows) < len(rows) or any(r["limit"] for r in rows)
    assert result.num_demos == len(kept) and result.steps == math.ceil(len(kept) / 8)
    (record,) = json.loads((tmp_path / "self" / "sft_summary.json").read_text())["self_rounds"]
    assert record["with_tool_call"] == len(called) and record["cut_by_limit"] == sum(r["limit"] is not None for r in rows)
    from rlvr.report import write_report
    from rlvr.selftrain import format_round, format_rounds

    assert f"{len(called)} calling a tool" in format_round(record) and "tool call" in format_rounds([record])
    assert "episodes calling a tool" in write_report(tmp_path / "self").read_text()
