"""The command line in a subprocess, as a user runs it: help, eval, train, errors in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys



RLVR = [sys.executable, "-m", "rlvr"]


def run(*args, cwd=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*RLVR, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"rlvr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


COMMANDS = ("eval", "sft", "doctor", "train", "run", "report", "chat", "tasks", "config", "env")


def test_help_lists_subcommands():
    """Every sub-command is registered (its own --help names it), and the top-level help lists
    exactly these commands."""
    import re

    from typer.testing import CliRunner

    from rlvr.cli import app

    runner = CliRunner()
    listed = set(re.findall(r"^[│|]\s+([a-z]+)\s{2,}", runner.invoke(app, ["--help"], prog_name="rlvr").output, re.MULTILINE))
    assert set(COMMANDS) <= listed, listed
    for command in COMMANDS:
        result = runner.invoke(app, [command, "--help"], prog_name="rlvr")
        assert result.exit_code == 0 and f"rlvr {command}" in " ".join(result.output.split()), (command, result.output)


def test_tasks_and_config_listing():
    assert "subtraction" in run("tasks").stdout
    out = run("config").stdout
    assert "num_generations: 8" in out and "learning_rate" in out


def test_eval_writes_records(tmp_path, tiny_dir):
    out = run("eval", "--model", str(tiny_dir), "--task", "subtraction", "--n", "4", "--max-new-tokens", "6",
              "-o", str(tmp_path / "ev")).stdout
    assert "accuracy" in out
    lines = (tmp_path / "ev" / "eval.jsonl").read_text().splitlines()
    assert len(lines) == 4
    record = json.loads(lines[0])
    assert {"prompt", "completion", "answer", "ground_truth", "correct"} <= set(record)


def test_train_then_eval_the_result(tmp_path, tiny_dir):
    out_dir = tmp_path / "run"
    run("train", "--model", str(tiny_dir), "--task", "subtraction", "-o", str(out_dir),
        "task.options={n: 100, high: 10}", "grpo.max_steps=1", "grpo.prompts_per_step=2", "grpo.num_generations=2",
        "sampling.max_completion_length=6", "eval.n=2", "run.quiet=true")
    assert (out_dir / "final" / "merged" / "config.json").exists()
    assert (out_dir / "report.html").exists()
    # a run directory is a model spec too
    run("eval", "--model", str(out_dir), "--task", "subtraction", "--n", "2", "--max-new-tokens", "4",
        "-o", str(tmp_path / "ev"))


def test_errors_print_in_one_line(tmp_path):
    proc = run("train", "grpo.learnin_rate=1e-5", check=False)
    assert proc.returncode == 1
    assert "unknown option 'grpo.learnin_rate'; did you mean 'learning_rate'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("eval", "--model", str(tmp_path / "missing-model-dir") + ".gguf", check=False)
    assert proc.returncode == 1 and "no such GGUF file" in proc.stderr
    proc = run("eval", "--task", "nosuchtask", check=False)
    assert proc.returncode == 1 and "nosuchtask" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_reports_no_signal_on_a_random_model(tiny_dir):
    """A random model never answers a subtraction right: the doctor says RL alone cannot learn (exit 2)."""
    proc = run("doctor", "--model", str(tiny_dir), "--task", "subtraction", "--prompts", "2", "--no-memory",
               "task.options={n: 100, high: 10}", "grpo.num_generations=2", "sampling.max_completion_length=6",
               check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rlvr doctor" in proc.stdout
    assert "no signal" in proc.stdout and "rlvr sft" in proc.stdout  # the finding and its fix


def test_train_with_doctor_stop_exits_2_before_training(tmp_path, tiny_dir):
    proc = run("train", "--model", str(tiny_dir), "--task", "subtraction", "-o", str(tmp_path / "run"),
               "task.options={n: 100, high: 10}", "grpo.num_generations=2", "grpo.prompts_per_step=2",
               "sampling.max_completion_length=6", "eval.n=0", "run.doctor=stop", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CannotLearn" in proc.stderr and "run.doctor=warn" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "doctor.json").exists()


def test_json_mode_prints_one_object_per_step_and_report_to_names_a_missing_tracker(tmp_path, tiny_dir):
    common = ["--model", str(tiny_dir), "--task", "subtraction", "task.options={n: 100, high: 10}",
              "grpo.max_steps=2", "grpo.prompts_per_step=2", "grpo.num_generations=2",
              "sampling.max_completion_length=6", "eval.n=2", "run.doctor=off"]
    out = run("train", "-o", str(tmp_path / "json"), *common, "run.log_format=json").stdout
    steps = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [s["step"] for s in steps] == [1, 2]
    assert "reward/total/mean" in steps[0] and "time/generate_s" in steps[0]
    assert all(line.startswith("{") for line in out.splitlines() if line.strip())  # nothing else on stdout

    import importlib.util

    if importlib.util.find_spec("mlflow") is None:  # not in the test environment (an optional extra)
        proc = run("train", "-o", str(tmp_path / "mlflow"), *common, "--report-to", "mlflow", check=False)
        assert proc.returncode == 1
        assert "--report-to mlflow: the mlflow package is not installed; pip install 'rlvr[mlflow]'" in proc.stderr


def test_env_names_the_cpu_benchmarks_ran_on():
    """`rlvr env` (which every bench record keeps) names the CPU model, the cores, torch's kernel level
    and the speed-relevant flags: bf16 speed and every speed ratio depend on them."""
    from typer.testing import CliRunner

    from rlvr.cli import app, cpu_description

    out = CliRunner().invoke(app, ["env"], prog_name="rlvr").output
    line = next(line for line in out.splitlines() if line.startswith("cpu "))
    assert line.split(None, 1)[1] == cpu_description()
    assert f"{len(os.sched_getaffinity(0))} cores" in line and "torch kernels" in line
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = next((row.split(":", 1)[1].strip() for row in cpuinfo.splitlines() if row.startswith("model name")), None)
    if model:
        assert line.split(None, 1)[1].startswith(model)
    if " avx2 " in f" {cpuinfo} ":
        assert "avx2" in line.split("torch kernels", 1)[1]
