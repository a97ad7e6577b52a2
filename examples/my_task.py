"""A task of your own, in a few lines: spell a random word backwards.

A task gives examples (question + ground-truth answer), checks an extracted answer, and can
optionally write a worked solution for the SFT warm-up. Use it with

    rlvr train --task examples/my_task.py --task-option n=500
    rlvr eval  --task examples/my_task.py:ReverseWord

or in Python: `rlvr.tasks.get_task("examples/my_task.py", n=500)`. Run this file to see examples.
"""

import random
import string

from rlvr.prompts import format_completion
from rlvr.tasks.base import Example, Task


class ReverseWord(Task):
    name = "reverse_word"
    description = "spell a random lowercase word backwards"

    def __init__(self, n: int = 1000, n_test: int = 100, length: int = 5, seed: int = 0):
        rng = random.Random(seed)
        words = ["".join(rng.choices(string.ascii_lowercase, k=length)) for _ in range(n + n_test)]
        examples = [Example(f"Spell '{w}' backwards.", w[::-1], {"word": w}) for w in words]
        self._train, self._test = examples[:n], examples[n:]

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        return float(answer is not None and answer.strip().strip("'\"").lower() == example.answer)

    def demonstration(self, example: Example) -> str:
        word = example.metadata["word"]
        think = f"letters: {' '.join(word)}\nbackwards: {' '.join(reversed(word))}"
        return format_completion(think, example.answer)


if __name__ == "__main__":
    task = ReverseWord(n=3, n_test=1)
    for ex in task.train_examples():
        print(ex.question, "->", ex.answer)
        print(task.demonstration(ex), "\n")
    ex = task.test_examples()[0]
    print("verify right:", task.verify(ex.answer, ex), " wrong:", task.verify("nope", ex))
