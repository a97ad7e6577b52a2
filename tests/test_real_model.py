"""A few checks with the bundled SmolLM2-135M-Instruct (the real model, not a random one)."""

import pytest

pytestmark = pytest.mark.slow


def test_bundled_model_loads_as_a_plain_trainable_model():
    from rlvr.models import load_model

    model, tok = load_model("smollm2-135m")
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype.is_floating_point and tok.eos_token == "<|im_end|>"


def test_eval_a_few_subtraction_examples(tmp_path):
    from rlvr.evaluate import evaluate
    from rlvr.models import load_model
    from rlvr.rollout import PromptFormat
    from rlvr.sampling.fast import FastSampler
    from rlvr.tasks import get_task

    model, tok = load_model("smollm2-135m")
    task = get_task("subtraction", high=100)
    result = evaluate(FastSampler(model, tok), tok, task, task.test_examples()[:3], fmt=PromptFormat(),
                      max_new_tokens=24, progress=False, out_path=tmp_path / "eval.jsonl")
    assert result.n == 3 and 0.0 <= result.accuracy <= 1.0
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == 3
