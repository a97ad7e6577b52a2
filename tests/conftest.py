"""Shared fixtures: tiny models and a toy task, so integration tests run in seconds on a CPU."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

from rlvr.tasks.base import Example, Task

ROOT = Path(__file__).resolve().parent.parent


def char_tokenizer():
    """A character-level tokenizer of ~70 symbols (a tiny vocabulary: random models emit every symbol)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    chars = list(string.digits + string.ascii_lowercase + " \n:?.,<>/=-+*()")
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.padding_side = "left"
    return fast


def char_model(seed: int = 0, hidden_size: int = 32):
    """A tiny random Llama over the character vocabulary (~30k parameters)."""
    from rlvr.models import tiny_random_model

    return tiny_random_model(seed, hidden_size=hidden_size, num_layers=2, tokenizer=char_tokenizer())


class DigitTask(Task):
    """Toy verifiable task: answer with the digit asked for. Scored densely by `digit_reward`."""

    name = "digit"
    system_prompt = ""

    def __init__(self, digit: str = "7", n: int = 64):
        self.digit, self.n = digit, n

    def _examples(self):
        return [Example(question=f"say {self.digit}", answer=self.digit) for _ in range(self.n)]

    def train_examples(self):
        return self._examples()

    def test_examples(self):
        return self._examples()[:8]

    def verify(self, answer, example):
        return float(answer is not None and answer.strip() == example.answer)


class SecretEnv:
    """TRL-style environment (environment_factory): the secret digit is the example's answer, and
    only the `peek` tool tells it."""

    def reset(self, answer, **kwargs) -> None:
        self.secret = answer

    def peek(self) -> str:
        """Tell the secret.

        Returns:
            The secret digit.
        """
        return self.secret


def question_mark_call(text: str) -> list:
    """The char vocabulary has no braces: in the toy, a "?" is a call of `peek`."""
    from rlvr.tools import ToolCall

    return [ToolCall("peek", {}, "?")] if "?" in text else []


class SecretTask(Task):
    name = "secret"
    system_prompt = ""

    def train_examples(self):
        return [Example(question="s", answer=d) for d in "3579" * 16]

    def test_examples(self):
        return self.train_examples()[:8]

    def verify(self, answer, example):
        return float(answer is not None and answer.strip() == example.answer)

    def environment(self, system_prompt):
        from rlvr.environments import TRLEnvironment

        env = TRLEnvironment(SecretEnv, self, system_prompt="", parse=question_mark_call, describe_tools=False)
        env.stop_strings = ("?",)
        return env


@pytest.fixture
def tiny_char():
    return char_model()


@pytest.fixture(scope="session")
def smol_tokenizer():
    from rlvr.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture
def tiny_smol(smol_tokenizer):
    """A tiny random Llama with the real SmolLM2 tokenizer (49k vocabulary)."""
    from rlvr.models import tiny_random_model

    return tiny_random_model(0, tokenizer=smol_tokenizer)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with the SmolLM2 tokenizer, saved as a Hugging Face directory (a model spec)."""
    from rlvr.models import tiny_random_model

    model, tok = tiny_random_model(0, tokenizer=smol_tokenizer)
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
