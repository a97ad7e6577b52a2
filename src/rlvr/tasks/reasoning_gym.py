"""Any reasoning-gym dataset as a task (`rg:<name>`, e.g. `rg:syllogism`), as in seed 004.

Train and test come from `reasoning_gym.create_dataset(name, seed=..., size=...)` with different
seeds. Reasoning-gym draws item i from `Random(seed + i)`, so seeds 42 and 43 give the same items
shifted by one: the test seed defaults to `seed + n`, past every train item, and overlapping
ranges are refused. Test questions that also occur in train are dropped (small problem spaces).
The verifier is the dataset's own `score_answer(answer, entry)`, so rlvr scores exactly as
reasoning-gym does; the entry (question, answer, metadata) is kept in the `rg_entry` column.

Accuracy counts an answer right only when reasoning-gym scores it fully right (1.0): `verify` is
0/1. Reasoning-gym's partial credit was averaged as accuracy before, and it is gameable (issue
21): on rg:syllogism the hedge "YesNo" earned ~0.5, on rg:propositional_logic a tautology 0.25
on every problem. The partial credit stays available as `partial_credit` (the reward of that
name), reported apart from accuracy.
Options other than n / n_test / seed / test_seed go to the dataset's config (difficulty etc.).
"""

from __future__ import annotations

from typing import Any

from rlvr.tasks.base import MAX_ANSWER_CHARS, Example, Task


def list_rg_datasets() -> list[str]:
    """Names of the registered reasoning-gym datasets."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(Task):
    """A procedurally generated reasoning-gym dataset; scored by reasoning-gym itself."""

    description = "any reasoning-gym dataset, e.g. rg:syllogism, rg:propositional_logic"

    def __init__(
        self,
        dataset: str,
        *,
        n: int = 1000,
        n_test: int = 200,
        seed: int = 42,
        test_seed: int | None = None,
        **config: Any,
    ):
        import reasoning_gym

        self.name = f"rg:{dataset}"
        if dataset not in list_rg_datasets():
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}; known: {', '.join(list_rg_datasets())}")
        test_seed = seed + n if test_seed is None else test_seed
        if seed - n_test < test_seed < seed + n:  # item i is drawn from Random(seed + i)
            raise ValueError(
                f"test_seed={test_seed} overlaps the train items (seeds {seed}..{seed + n - 1}); "
                f"use test_seed >= {seed + n} or <= {seed - n_test}"
            )
        try:
            self._data = reasoning_gym.create_dataset(dataset, seed=seed, size=n, **config)
            test_data = reasoning_gym.create_dataset(dataset, seed=test_seed, size=n_test, **config)
        except TypeError as e:  # an unknown config field
            raise ValueError(f"bad option for rg:{dataset}: {e}") from e
        self._train = [rg_example(entry) for entry in self._data]
        seen = {e.question for e in self._train}
        self._test = [ex for ex in map(rg_example, test_data) if ex.question not in seen]

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        """1.0 when reasoning-gym scores the answer fully right, else 0.0 (see the module docstring)."""
        return 1.0 if self.partial_credit(answer, example) >= 1.0 else 0.0

    def partial_credit(self, answer: str | None, example: Example) -> float:
        """reasoning-gym's own score in [0, 1] (often 0/1; some datasets give partial credit)."""
        if answer is not None and len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        try:
            return float(self._data.score_answer(answer, example.metadata["rg_entry"]))
        except Exception:  # a scorer choking on malformed text is a wrong answer
            return 0.0


def rg_example(entry: dict) -> Example:
    """An Example from a reasoning-gym entry (its `answer` may be None: some have many answers)."""
    answer = entry.get("answer")
    return Example(
        question=entry["question"],
        answer="" if answer is None else str(answer),
        metadata={"rg_entry": entry},
    )
