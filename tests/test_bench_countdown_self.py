"""bench/bench_countdown_self.py's control run reuses a finished run's warm-up only when that run
had the same config but for what a control changes (issue 20): real files, no model."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "bench"))  # the bench imports its neighbour `ceiling`
    try:
        spec = importlib.util.spec_from_file_location("bench_countdown_self", ROOT / "bench" / "bench_countdown_self.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


OVERRIDES = ["sft.self_rounds=2", "sft.self_levels=[1, 1]", "grpo.max_steps=16"]


def _finished_run(bench, tmp_path, overrides):
    """A run directory as `rlvr run` leaves it: the resolved config, the base evaluation, the warm-up model."""
    from rlvr.config import load_config

    config = tmp_path / "bench.yaml"
    config.write_text(bench.CONFIG)
    source = tmp_path / "real"
    (source / "eval").mkdir(parents=True)
    (source / "sft" / "final" / "merged").mkdir(parents=True)
    load_config(config, [f"run.output_dir={source}", f"sft.self_shot_source={tmp_path / 'real-shots.jsonl'}",
                         *overrides]).save(source / "config.yaml")
    (source / "eval" / "base_summary.json").write_text(json.dumps({"stage": "base", "accuracy": 0.0}))
    (source / "sft" / "final" / "merged" / "config.json").write_text("{}")
    return config, source


def test_the_control_takes_the_warm_up_of_the_same_config(bench, tmp_path):
    config, source = _finished_run(bench, tmp_path, OVERRIDES)
    run_dir = tmp_path / "control"
    run_dir.mkdir()
    # another run directory and few-shot file: the same config for the warm-up
    bench.reuse_warm_up(source, run_dir, config, [f"sft.self_shot_source={tmp_path / 'control-shots.jsonl'}", *OVERRIDES])
    assert json.loads((run_dir / "eval" / "base_summary.json").read_text())["stage"] == "base"
    assert (run_dir / "sft" / "final" / "merged" / "config.json").exists()


def test_the_control_refuses_the_warm_up_of_another_config(bench, tmp_path):
    config, source = _finished_run(bench, tmp_path, OVERRIDES)
    run_dir = tmp_path / "control"
    run_dir.mkdir()
    with pytest.raises(SystemExit, match=r"grpo\.max_steps.*differ"):
        bench.reuse_warm_up(source, run_dir, config, [*OVERRIDES[:2], "grpo.max_steps=20"])
    with pytest.raises(SystemExit, match=r"sft\.self_rounds, sft\.self_levels|sft\.self_levels, sft\.self_rounds"):
        bench.reuse_warm_up(source, run_dir, config, ["grpo.max_steps=16"])  # a warm-up of 3 rounds
    assert not (run_dir / "eval").exists() and not (run_dir / "sft").exists()  # nothing copied


def test_the_control_needs_a_finished_warm_up(bench, tmp_path):
    config, source = _finished_run(bench, tmp_path, OVERRIDES)
    (source / "sft" / "final" / "merged" / "config.json").unlink()  # stopped during the warm-up
    with pytest.raises(SystemExit, match="no finished warm-up"):
        bench.reuse_warm_up(source, tmp_path / "control", config, OVERRIDES)
