"""The self warm-up (`sft.source: self`): learn the format from the model's own verified answers.

A 135M model almost never writes `<think> ... </think> <answer> ... </answer>` with a right answer
on its own, so GRPO gets no signal, and until now the warm-up needed demonstrations: the task's
worked solutions or a teacher's. This needs neither, only the verifier (rejection-sampling
fine-tuning; STaR, Zelikman et al. 2022, arXiv 2203.14465):

    for each of sft.self_rounds rounds:
        questions   sft.self_questions fresh training questions (or, with sft.self_levels, fresh
                    problems at that round's difficulty level: a curriculum, `level_rounds`)
        sample      sft.self_samples completions each, few-shot prompted: sft.self_shots examples in
                    the target format before the question (`few_shot_prompt`)
        judge       the task's verifier and the format check, once per completion (rlvr.judge)
        keep        verified AND formatted (`accepts`), distinct, at most sft.self_max_per_question
                    per question (`select_accepted`); with sft.self_check_arithmetic, also no false
                    arithmetic in the think part (rlvr.reasoning: a right answer reached by made-up
                    steps teaches made-up steps)
        fine-tune   on the kept completions under the ordinary zero-shot prompt (rlvr.sft.sft_train)
        evaluate    held-out accuracy, greedy, zero-shot (sft.self_eval_n examples)

A multi-turn task (one with tools, or its own environment) samples whole episodes
(rlvr.episodes.run_episodes, the same limits as GRPO's) after the few-shot prompt, whose shots are
then trajectories too (call, result, answer: the task's `demonstration_messages`, or a .jsonl
whose completions are message lists); the judge reads the final turn, an episode cut by a limit is
never kept, and a kept episode is fine-tuned on as the trajectory it was (the environment's
messages carry no loss).

Where it departs from STaR: no rationalization (STaR shows the answer as a hint for the questions
the model failed; a completion written towards a given answer teaches reaching it without the
reasoning that finds it, so only what the model found itself is kept); each round continues
fine-tuning the current model on that round's kept completions instead of restarting from the
base model on everything kept so far (cheaper on a CPU; every round sees fresh questions); and
the format is required as well as the answer, since teaching the format is what the warm-up is
for. The few-shot examples are only ever in the prompt: they are not trained on.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr.demos import Demo
from rlvr.environments import SingleTurn
from rlvr.episodes import environment_suffix, run_episodes
from rlvr.judge import Verdict, judge
from rlvr.prompts import ANSWER_CLOSE, format_completion, render_prompt
from rlvr.rollout import PromptFormat, sampling_params
from rlvr.tasks.base import Example, Task


class SelfWarmUpError(RuntimeError):
    """The self warm-up accepted no completion at all: there is nothing to fine-tune on."""


@dataclass
class Candidate:
    """One sampled completion of the self warm-up and the judge's verdict on it."""

    question: int
    """index of its question within the round"""
    example: Example
    text: str
    """the completion (a multi-turn episode's final turn), prefill included"""
    verdict: Verdict
    messages: list[dict] | None = None
    """a multi-turn episode: its whole trajectory after the prompt (assistant, tool, ..., assistant)"""
    limit: str | None = None
    """the episode limit that cut it (rlvr.episodes), if any: such an episode is never kept"""
    tool_calls: int = 0

    @functools.cached_property
    def false_arithmetic(self) -> bool:
        """Its think part states a false arithmetic claim (rlvr.reasoning); read once, asked twice (the
        selection with sft.self_check_arithmetic, the round's count)."""
        from rlvr.reasoning import think_arithmetic

        return think_arithmetic(self.text) is False


@dataclass
class SelfResult:
    rounds: list[dict] = field(default_factory=list)
    """one record per round (`round_record`)"""
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    num_demos: int = 0
    """completions fine-tuned on, all rounds"""


# ------------------------------------------------------------------------ the accept rule (pure)


def accepts(verdict: Verdict) -> bool:
    """The rule: the verifier gives the answer full marks AND the completion has the format."""
    return verdict.formatted and verdict.correct >= 1.0


def states_false_arithmetic(candidate: Candidate) -> bool:
    """The candidate's think part states an arithmetic claim that is false (rlvr.reasoning)."""
    return candidate.false_arithmetic


def trim_after_answer(text: str) -> str:
    """The completion up to its last `</answer>`: the model learns to stop there."""
    end = text.rfind(ANSWER_CLOSE)
    return text if end < 0 else text[: end + len(ANSWER_CLOSE)]


def trajectory(candidate: Candidate) -> list[dict] | None:
    """A multi-turn candidate's messages with the final turn trimmed after the answer; None for a
    single-turn one."""
    if candidate.messages is None:
        return None
    last = candidate.messages[-1]
    return [*candidate.messages[:-1], {**last, "content": trim_after_answer(last["content"])}]


def select_accepted(candidates: list[Candidate], max_per_question: int,
                    check_arithmetic: bool = False) -> list[Candidate]:
    """The accepted candidates (`accepts`; not cut by an episode limit; with `check_arithmetic`,
    none that `states_false_arithmetic`), each text (a multi-turn one: each trajectory) once per
    question, at most `max_per_question` per question, in sampling order."""
    kept, seen, per_question = [], set(), {}
    for c in candidates:
        turns = trajectory(c)
        text = trim_after_answer(c.text).strip() if turns is None else tuple(
            (m["role"], m["content"].strip()) for m in turns)
        key = (c.question, text)
        if (not accepts(c.verdict) or c.limit is not None or key in seen
                or per_question.get(c.question, 0) >= max_per_question):
            continue
        if check_arithmetic and states_false_arithmetic(c):
            continue
        seen.add(key)
        per_question[c.question] = per_question.get(c.question, 0) + 1
        kept.append(c)
    return kept


def round_record(index: int, candidates: list[Candidate], kept: list[Candidate], num_questions: int) -> dict:
    """What a round did: questions tried, completions sampled, formatted, verified, accepted (both),
    questions with an accepted completion, completions kept, and how many accepted ones state false
    arithmetic in their think part (counted whether or not sft.self_check_arithmetic rejects them);
    for a multi-turn task also the episodes that called a tool and those cut by a limit."""
    accepted = [c for c in candidates if accepts(c.verdict)]
    record = {"round": index, "questions": num_questions, "samples": len(candidates),
              "formatted": sum(c.verdict.formatted for c in candidates),
              "verified": sum(c.verdict.correct >= 1.0 for c in candidates),
              "accepted": len(accepted), "false_arithmetic": sum(states_false_arithmetic(c) for c in accepted),
              "solved": len({c.question for c in accepted}), "kept": len(kept)}
    if any(c.messages is not None for c in candidates):
        record.update(with_tool_call=sum(c.tool_calls > 0 for c in candidates),
                      cut_by_limit=sum(c.limit is not None for c in candidates))
    return record


# ------------------------------------------------------------------------ few-shot prompts


def shot_from_answer(example: Example) -> str:
    """A few-shot completion built from a question/answer pair: a short think part, the answer."""
    return format_completion(f"The question asks for one answer; working it out gives {example.answer}.",
                             example.answer)


def few_shot_examples(task: Task, candidates: list[Example], n: int, source: str,
                      multi_turn: bool = False) -> list[tuple[Example, str | list[dict]]]:
    """`n` (example, completion) pairs in the target format: `source` auto (the task's worked
    solution where it has one, else `shot_from_answer`), answers (always `shot_from_answer`) or a
    .jsonl path of demonstrations (the first n; `candidates` unused). With `multi_turn` (a task with
    tools), a shot may be a trajectory instead of a completion: a list of messages (assistant, tool,
    ..., assistant), from the task's `demonstration_messages` or the .jsonl's message-list completions."""
    if source.endswith(".jsonl"):
        from rlvr.demos import load_demos_jsonl

        demos = load_demos_jsonl(source)[:n]
        return [(Example(d.question, d.ground_truth, dict(d.metadata)),
                 d.messages if multi_turn and d.messages else d.completion) for d in demos]
    if source not in ("auto", "answers"):
        raise ValueError(f"sft.self_shot_source must be auto, answers or a .jsonl path, got {source!r}")
    from rlvr.demos import worked_solution

    return [(ex, (worked_solution(task, ex, trajectory=multi_turn) if source == "auto" else None)
             or shot_from_answer(ex)) for ex in candidates[:n]]


def shot_turns(shot: str | list[dict]) -> list[dict]:
    """A shot's messages after its question: the trajectory, or the completion as one assistant turn."""
    return list(shot) if isinstance(shot, list) else [{"role": "assistant", "content": shot}]


def few_shot_prompt(tokenizer, task: Task, fmt: PromptFormat, shots: list[tuple[Example, str | list[dict]]],
                    example: Example, messages: list[dict] | None = None) -> str:
    """The prompt: the environment's system message (with the tools, if any), each shot as a user
    turn and its assistant completion (or whole trajectory), then the question (chat template), or
    the same as "Question: ... Answer: ..." blocks (plain template; a tool result as an episode
    shows it, `rlvr.episodes.environment_suffix`). `messages`: the environment's first messages for
    `example`, when the caller has them."""
    messages = messages or fmt.environment(task).reset(example)
    system, question = messages[:-1], messages[-1]
    chat = fmt.uses_chat(tokenizer)
    if chat:
        turns = [m for ex, c in shots for m in ({"role": "user", "content": task.user_message(ex)}, *shot_turns(c))]
        return render_prompt(tokenizer, [*system, *turns, question], chat=True, prefill=fmt.prefill)
    blocks = "".join(f"Question: {task.user_message(ex)}\nAnswer: {_plain_turns(shot_turns(c))}\n\n" for ex, c in shots)
    head = f"{system[0]['content']}\n\n" if system else ""  # as rlvr.prompts.PLAIN_TEMPLATE
    return f"{head}{blocks}Question: {question['content']}\nAnswer: {fmt.prefill}"


def _plain_turns(turns: list[dict]) -> str:
    """A trajectory in the plain template: assistant texts, the environment's messages between them
    as an episode renders them ("\nResult: ...\nAnswer: ")."""
    out, pending = "", []
    for m in turns:
        if m["role"] != "assistant":
            pending.append(m)
            continue
        if pending:
            out += environment_suffix(None, pending, chat=False)
            pending = []
        out += m["content"]
    return out


# ------------------------------------------------------------------------ one round


def sample_candidates(sampler, tokenizer, task: Task, fmt: PromptFormat, shots, questions: list[Example],
                      params, num_samples: int, seed: int, batch_size: int) -> list[Candidate]:
    """`num_samples` completions per question (few-shot prompted), judged. Each question samples
    with its own generator seeded from `seed`, so batching does not change what it samples."""
    seeds = torch.randint(0, 2**62, (len(questions),), generator=torch.Generator().manual_seed(seed)).tolist()
    per_call = max(1, batch_size // num_samples)
    env = fmt.environment(task)
    out: list[Candidate] = []
    for start in range(0, len(questions), per_call):
        batch = questions[start:start + per_call]
        first = [env.reset(ex) for ex in batch]
        ids = [tokenizer(few_shot_prompt(tokenizer, task, fmt, shots, ex, m), add_special_tokens=False)["input_ids"]
               for ex, m in zip(batch, first)]
        gens = [torch.Generator().manual_seed(s) for s in seeds[start:start + per_call]]
        if not isinstance(env, SingleTurn):  # episodes, few-shot prompted; the trajectory is what is kept
            episodes = run_episodes(sampler, tokenizer, env, batch, gens, num_samples, params,
                                    chat=fmt.uses_chat(tokenizer), prefill=fmt.prefill, prompt_ids=ids,
                                    first_messages=first, limits=fmt.limits)
            for ep in episodes:
                text = fmt.prefill + ep.text
                out.append(Candidate(start + ep.prompt_index, ep.example, text, judge(task, text, ep.example),
                                     ep.conversation(), ep.limit, ep.tool_calls))
            continue
        for o in sampler.generate(ids, params, num_samples=num_samples, generator=gens):
            ex = batch[o.prompt_index]
            text = fmt.prefill + tokenizer.decode(o.token_ids, skip_special_tokens=True)
            out.append(Candidate(start + o.prompt_index, ex, text, judge(task, text, ex)))
    return out


def to_demos(kept: list[Candidate]) -> list[Demo]:
    """The kept completions as demonstrations for `sft_train` (trimmed after the answer)."""
    return [Demo(c.example.question, trim_after_answer(c.text), c.example.answer, dict(c.example.metadata), "self",
                 messages=trajectory(c)) for c in kept]


def question_rounds(examples: list[Example], shots: int, per_round: int, rounds: int,
                    generator: torch.Generator) -> tuple[list[Example], list[list[Example]]]:
    """(shot examples, each round's questions): a seeded shuffle of the training split, the first
    `shots` for the prompt, then fresh questions for every round (starting over when they run out)."""
    order = [examples[i] for i in torch.randperm(len(examples), generator=generator).tolist()]
    shot_pool, pool = order[:shots], order[shots:] or order
    per_round = min(per_round, len(pool))
    return shot_pool, [[pool[(r * per_round + i) % len(pool)] for i in range(per_round)] for r in range(rounds)]


def level_rounds(task: Task, levels: list[int], per_round: int, rounds: int, seed: int) -> list[list[Example]]:
    """Each round's questions as fresh problems at that round's level (`levels[r]`, the last one
    repeating), from the task's levels (rlvr.curriculum.task_levels: make_example(rng, level)).
    Question i of round r comes from its own `random.Random`, so a round is reproducible; a problem
    that is one of the task's held-out questions is drawn again (never trained on)."""
    import random

    from rlvr.curriculum import task_levels

    try:
        levels_of = task_levels(task, seed=seed)
    except ValueError as e:
        raise ValueError(f"sft.self_levels: {e}") from None
    bad = [lv for lv in levels if not levels_of.min_level <= lv <= levels_of.max_level]
    if bad:
        raise ValueError(f"sft.self_levels: task '{task.name}' has levels {levels_of.min_level} to "
                         f"{levels_of.max_level}, got {bad}")
    make = levels_of.make
    held_out = {ex.question for ex in task.test_examples()}
    out = []
    for r in range(rounds):
        level, questions = levels[min(r, len(levels) - 1)], []
        for i in range(per_round):
            rng = random.Random(seed * 1_000_003 + r * 100_003 + i)
            ex = make(rng, level)
            for _ in range(100):
                if ex.question not in held_out:
                    break
                ex = make(rng, level)
            questions.append(ex)
        out.append(questions)
    return out


# ------------------------------------------------------------------------ the loop


def self_warm_up(policy, tokenizer, task: Task, cfg, *, run_dir: Path, fine_tune, tracker=None) -> SelfResult:
    """The rounds of the module docstring on `policy`, trained in place by `fine_tune(demos,
    step_offset)` (rlvr.sft.sft_train on it: returns its steps and losses). Raises
    `SelfWarmUpError` when no round accepted anything."""
    from rlvr.config import sampler_options
    from rlvr.sampling import make_sampler

    s, smp = cfg.sft, cfg.sampling
    fmt = PromptFormat.from_config(cfg.task)
    shot_pool, rounds = question_rounds(task.train_examples(), s.self_shots, s.self_questions, s.self_rounds,
                                        torch.Generator().manual_seed(cfg.run.seed))
    if s.self_levels:  # a curriculum: fresh problems at each round's level instead of the training split
        rounds = level_rounds(task, s.self_levels, s.self_questions, s.self_rounds, cfg.run.seed)
    shots = few_shot_examples(task, shot_pool, s.self_shots, s.self_shot_source,
                              multi_turn=not isinstance(fmt.environment(task), SingleTurn))
    params = sampling_params(tokenizer, max_new_tokens=smp.max_completion_length, temperature=smp.temperature,
                             top_p=smp.top_p, top_k=smp.top_k, stop_at_answer=smp.stop_at_answer)
    sampler = make_sampler(smp.backend, policy, tokenizer, **sampler_options(cfg))
    result, t0 = SelfResult(), time.perf_counter()
    for r, questions in enumerate(rounds, start=1):
        policy.eval()
        candidates = sample_candidates(sampler, tokenizer, task, fmt, shots, questions, params,
                                       s.self_samples, cfg.run.seed + r, cfg.eval.batch_size)
        kept = select_accepted(candidates, s.self_max_per_question, s.self_check_arithmetic)
        record = round_record(r, candidates, kept, len(questions))
        if s.self_levels:
            record["level"] = s.self_levels[min(r, len(s.self_levels)) - 1]
        _write_candidates(run_dir / "self" / f"round-{r}.jsonl", candidates, kept)
        if kept:
            sampler.release()
            trained = fine_tune(to_demos(kept), result.steps)
            sampler.sync_weights(policy)
            result.steps += trained.steps
            result.losses += trained.losses
            result.num_demos += len(kept)
            record.update(sft_steps=trained.steps, loss_first=trained.losses[0], loss_last=trained.losses[-1])
        if s.self_eval_n:
            record.update(_evaluate_round(sampler, policy, tokenizer, task, cfg, run_dir, tracker, record, result.steps))
        record["seconds"] = time.perf_counter() - t0
        result.rounds.append(record)
        if not cfg.run.quiet:
            print(format_round(record), flush=True)
    result.seconds = time.perf_counter() - t0
    policy.eval()
    if not result.num_demos:
        raise SelfWarmUpError(
            f"the self warm-up accepted no completion in {len(rounds)} rounds of {s.self_questions} questions x "
            f"{s.self_samples} samples: the model never wrote a verified answer in the format. Try more samples "
            "(sft.self_samples), other few-shot examples (sft.self_shot_source), a prefill (task.prefill=<think>) "
            "or a larger model; see RUN/self/round-*.jsonl for what it wrote")
    return result


def _evaluate_round(sampler, policy, tokenizer, task, cfg, run_dir: Path, tracker, record: dict, step: int) -> dict:
    """Greedy zero-shot accuracy on the first sft.self_eval_n held-out examples after a round; the
    eval.jsonl row (stage "self round R") carries the round's counts as `self/<count>`. (Not in
    metrics.jsonl: a record there at an SFT step would replace that step's loss.)"""
    r = record["round"]
    from rlvr.evaluate import evaluate_config

    policy.eval()
    sub = copy.deepcopy(cfg)
    sub.eval = dataclasses.replace(cfg.eval, n=cfg.sft.self_eval_n, samples=1)
    res = evaluate_config(sampler, tokenizer, task, sub, progress=not cfg.run.quiet,
                          out_path=run_dir / "eval" / f"self-round-{r}.jsonl")
    if tracker is not None:
        counts = {f"self/{k}": v for k, v in record.items() if k != "round"}
        tracker.log_eval({"step": step, "stage": f"self round {r}", **res.summary(), **counts})
    return {"accuracy": res.accuracy, "format_rate": res.format_rate, "eval_n": res.n}


def _write_candidates(path: Path, candidates: list[Candidate], kept: list[Candidate]) -> None:
    """Every completion of a round with its verdict and whether it was kept (RUN/self/round-R.jsonl)."""
    from rlvr.evaluate import write_jsonl

    kept_ids = {id(c) for c in kept}
    rows = []
    for c in candidates:
        row = {"question": c.question, "prompt": c.example.question, "completion": c.text,
               "answer": c.verdict.answer, "ground_truth": c.example.answer, "correct": c.verdict.correct,
               "format": c.verdict.formatted, "accepted": accepts(c.verdict), "kept": id(c) in kept_ids}
        if c.messages is not None:
            row.update(conversation=c.messages, tool_calls=c.tool_calls, limit=c.limit)
        rows.append(row)
    write_jsonl(path, rows)


ROUND_COLUMNS = (("round", "round", "{}"), ("level", "level", "{}"), ("questions", "questions", "{}"), ("samples", "samples", "{}"),
                 ("with_tool_call", "tool call", "{}"), ("cut_by_limit", "cut", "{}"),
                 ("accepted", "accepted", "{}"), ("false_arithmetic", "bad math", "{}"), ("solved", "solved", "{}"),
                 ("kept", "kept", "{}"),
                 ("accuracy", "accuracy", "{:.1%}"), ("format_rate", "format", "{:.1%}"))


def format_round(record: dict) -> str:
    """One line: `self round 2: 64 questions, 512 samples, 37 accepted (21 questions, 5 with false
    arithmetic), 30 kept; accuracy 12.0%`."""
    bad = f", {record['false_arithmetic']} with false arithmetic" if record.get("false_arithmetic") else ""
    episodes = (f" ({record['with_tool_call']} calling a tool, {record['cut_by_limit']} cut by a limit)"
                if "with_tool_call" in record else "")
    line = (f"self round {record['round']}: {record['questions']} questions, {record['samples']} samples{episodes}, "
            f"{record['accepted']} accepted ({record['solved']} questions{bad}), {record['kept']} kept")
    if "accuracy" in record:
        line += f"; held-out accuracy {record['accuracy']:.1%}, format {record['format_rate']:.1%}"
    return line


def round_column_shown(rounds: list[dict], key: str) -> bool:
    """A round record's field is a column (here and in the report) when some round has it; the count
    of false arithmetic only when some round had any (a task whose reasoning states none shows no 0s)."""
    return any(r.get(key) if key == "false_arithmetic" else key in r for r in rounds)


def format_rounds(rounds: list[dict]) -> str:
    """The rounds as a plain table (questions tried, accepted, accuracy after the round)."""
    cols = [c for c in ROUND_COLUMNS if round_column_shown(rounds, c[0])]
    lines = ["  ".join(f"{title:>9}" for _, title, _ in cols)]
    for r in rounds:
        lines.append("  ".join(f"{fmt.format(r[k]) if k in r else '-':>9}" for k, _, fmt in cols))
    return "\n".join(lines)
