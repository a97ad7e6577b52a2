"""Every preset in configs/ loads, and runs one GRPO step with a tiny model put in place of the real one."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from rlvr.config import load_config
from rlvr.trainer import train

PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_presets_for_every_seed_workflow():
    names = " ".join(p.name for p in PRESETS)
    for seed in ("seed000", "seed001", "seed002", "seed004"):
        assert seed in names
    assert (ROOT / "configs" / "main.yaml").exists()


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_one_step(preset, tiny_dir, tmp_path):
    cfg = load_config(preset, [
        f"model.name={tiny_dir}", f"run.output_dir={tmp_path / 'run'}", "grpo.max_steps=1",
        "grpo.prompts_per_step=1", "grpo.num_generations=2", "sampling.max_completion_length=4",
        "eval.n=1", "eval.on_start=false", "run.quiet=true", "model.load_in_4bit=false",
    ])
    if cfg.task.name == "gsm8k" and not any((p / "train.jsonl").exists() for p in
                                          (ROOT.parent / "shared" / "data" / "gsm8k", ROOT / "data" / "gsm8k")):
        pytest.skip("GSM8K data not found next to the repository")
    train(cfg, model=None, tokenizer=None)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "reward/total/mean" in json.loads(lines[0])
