"""GSM8K grade-school math (seed 001, docs/SEEDS.md), from local JSONL files or the Hugging Face Hub.

Where the data comes from, first found wins: the `path` option; the RLVR_GSM8K_DIR environment
variable; `data/gsm8k` or `../shared/data/gsm8k` relative to the current directory, then to the
repository root; else the Hub's `openai/gsm8k` ("main") through `datasets`. A directory holds
`train.jsonl` and `test.jsonl` with keys `question` and `answer` (the official format).

The ground truth is the text after `####` with commas removed. The comparison is numeric after
removing `$`, a trailing `.` and (remove_comma=True, seed 001's default) commas.
Demonstrations are the dataset's worked solutions with the `<<48/2=24>>` calculator notes removed.

Metadata column: `solution` (the worked solution without its final `#### answer` line).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from rlvr.prompts import format_completion
from rlvr.tasks.base import MAX_ANSWER_CHARS, Example, Task, normalize_text, parse_number
from rlvr.tasks.mathcheck import math_equal

HUB_DATASET, HUB_CONFIG = "openai/gsm8k", "main"
ENV_VAR = "RLVR_GSM8K_DIR"
CANDIDATES = ("data/gsm8k", "../shared/data/gsm8k")
REPO_ROOT = Path(__file__).resolve().parents[3]
_CALCULATOR = re.compile(r"<<[^>]*>>")


class GSM8KTask(Task):
    """Grade-school math word problems with numeric answers."""

    name = "gsm8k"
    description = "grade-school math word problems (seed 001); local JSONL or openai/gsm8k"

    def __init__(
        self,
        *,
        path: str | None = None,
        remove_comma: bool = True,
        n: int | None = None,
        n_test: int | None = None,
        seed: int = 42,
    ):
        self.remove_comma = remove_comma
        train, test = load_gsm8k(path)
        self._train = _subset(train, n, seed)
        self._test = _subset(test, n_test, seed)

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        """Numeric equality; a non-numeric answer must match the truth as normalised text, else be
        equal to it by math-verify (`\\boxed{18}`, `\\frac{36}{2}`; not with a comma when
        remove_comma is off, whose point is refusing "1,234")."""
        if answer is None or len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        truth = parse_number(example.answer)
        value = parse_number(answer, remove_comma=self.remove_comma)
        if truth is not None and value is not None:
            return 1.0 if truth == value else 0.0
        if normalize_text(answer) == normalize_text(example.answer):
            return 1.0
        if not self.remove_comma and "," in answer:
            return 0.0
        return 1.0 if math_equal(answer, example.answer) else 0.0

    def demonstration(self, example: Example) -> str:
        return format_completion(strip_calculator(example.metadata["solution"]), example.answer)


def parse_gsm8k_answer(answer_field: str) -> tuple[str, str]:
    """(worked solution, final answer) from the dataset's `answer` field ("...\\n#### 1,234")."""
    solution, sep, final = answer_field.rpartition("####")
    if not sep:
        raise ValueError(f"no '####' in GSM8K answer: {answer_field[:80]!r}")
    return solution.strip(), final.strip().replace(",", "")


def strip_calculator(solution: str) -> str:
    """Remove the `<<48/2=24>>` calculator annotations, keep the sentences."""
    return _CALCULATOR.sub("", solution)


def make_gsm8k_example(row: dict) -> Example:
    solution, final = parse_gsm8k_answer(row["answer"])
    return Example(question=row["question"].strip(), answer=final, metadata={"solution": solution})


def find_local_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The first directory holding train.jsonl and test.jsonl (see the module docstring)."""
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        candidates = [base / c for base in (Path.cwd(), REPO_ROOT) for c in CANDIDATES]
    for d in candidates:
        if (d / "train.jsonl").is_file() and (d / "test.jsonl").is_file():
            return d
    if path is not None or os.environ.get(ENV_VAR):
        raise FileNotFoundError(f"no train.jsonl and test.jsonl in {candidates[0]}")
    return None


def load_gsm8k(path: str | None = None) -> tuple[list[Example], list[Example]]:
    """(train, test) examples from the local copy, else from the Hub."""
    local = find_local_dir(path)
    if local is not None:
        return _read_jsonl(local / "train.jsonl"), _read_jsonl(local / "test.jsonl")
    try:
        from datasets import load_dataset

        data = load_dataset(HUB_DATASET, HUB_CONFIG)
        return [make_gsm8k_example(r) for r in data["train"]], [make_gsm8k_example(r) for r in data["test"]]
    except Exception as e:
        raise RuntimeError(
            f"GSM8K not found locally (set path=..., or {ENV_VAR}, or put train.jsonl/test.jsonl in "
            f"data/gsm8k) and loading {HUB_DATASET} from the Hub failed ({type(e).__name__}: {e})"
        ) from e


def _read_jsonl(file: Path) -> list[Example]:
    with open(file, encoding="utf-8") as f:
        return [make_gsm8k_example(json.loads(line)) for line in f if line.strip()]


def _subset(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A random subset of n examples (seed 001 evaluates on 200 random test questions)."""
    if n is None or n >= len(examples):
        return examples
    return random.Random(seed).sample(examples, n)
