"""The report: plots and the self-contained HTML, built from a synthetic run directory.

The numbers are synthetic (this tests rendering, not training); the run directory is written by
the real Tracker, so the report reads exactly what the trainer writes.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from rlvr.report import before_after, load_run, verdict
from rlvr.report.html import pick_samples, split_completion, write_report
from rlvr.report.plots import make_plots, smooth
from rlvr.tracking import Tracker

EVIL = '<script>alert("pwned")</script><img src="https://evil.example/x.png">'


def _grpo_metrics(step: int, steps: int, rng: np.random.Generator) -> dict:
    """Plausible GRPO curves: reward rises, zero-signal falls, length grows, KL grows."""
    progress = step / steps
    acc = 0.15 + 0.5 * progress + rng.normal(0, 0.05)
    fmt = min(1.0, 0.4 + progress + rng.normal(0, 0.05))
    metrics = {
        "reward/total/mean": acc + 0.2 * fmt, "reward/total/std": 0.35 - 0.1 * progress,
        "reward/accuracy/mean": acc, "reward/accuracy/std": 0.4,
        "reward/format/mean": fmt, "reward/format/std": 0.3 * (1 - progress) + 0.02,
        "train/accuracy": acc, "train/format_rate": fmt,
        "signal/zero_std_groups": max(0.0, 0.7 - 0.5 * progress + rng.normal(0, 0.05)),
        "completion/length_mean": 60 + 40 * progress + rng.normal(0, 4),
        "completion/length_max": min(128, 100 + 30 * progress + rng.normal(0, 5)),
        "completion/truncated_frac": max(0.0, 0.02 + rng.normal(0, 0.01)),
        "loss/policy": rng.normal(0, 0.01), "loss/kl": 0.002 * progress + abs(rng.normal(0, 1e-4)),
        "policy/clip_frac": abs(rng.normal(0.01, 0.005)), "policy/entropy": 0.9 - 0.3 * progress,
        "optim/grad_norm": abs(rng.normal(0.5, 0.1)), "optim/lr": 1e-5,
        "time/generate_s": 3.0 + rng.normal(0, 0.2), "time/update_s": 1.5,
        "throughput/generate_tok_s": 800 + rng.normal(0, 30), "throughput/update_tok_s": 2000.0,
    }
    if step == 40:
        metrics["alarm/truncation"] = "12% of completions hit max_completion_length"
    return metrics


def _sample(step: int, i: int) -> dict:
    correct = (i + step) % 2 == 0
    completion = (
        f"<think>step {step}: 7 + 5 = 12, so the answer is 12.</think><answer>{12 if correct else 13}</answer>"
    )
    if i == 1:
        completion = f"<think>{EVIL} & more</think><answer>{EVIL}</answer>"
    return {
        "step": step, "prompt": "What is 7 + 5? Show your work.", "completion": completion,
        "answer": "12" if correct else EVIL if i == 1 else "13", "ground_truth": "12",
        "rewards": {"accuracy": float(correct), "format": 1.0, "total": float(correct) + 0.2},
    }


def make_synthetic_run(root: Path, grpo_steps: int = 120) -> Path:
    """A pipeline run laid out as `rlvr run` writes it: RUN/config.yaml, RUN/summary.json (base,
    sft, grpo rows), RUN/base/eval.jsonl (per-example records, not evaluations), RUN/sft/ (40 SFT
    steps), RUN/grpo/ (`grpo_steps` steps; evals "before", "step 20", ..., "after")."""
    rng = np.random.default_rng(0)
    run = root / "run"
    config = {"model": {"name": "smollm2-135m"}, "task": {"name": "subtraction"},
              "sampling": {"max_completion_length": 128}, "grpo": {"num_generations": 8, "beta": 0.04}}
    Tracker(run, config=config).close()
    (run / "base").mkdir()
    (run / "base" / "eval.jsonl").write_text("".join(
        json.dumps({"index": i, "prompt": "7 - 5?", "completion": "2", "answer": "2", "ground_truth": "2",
                    "correct": 1.0, "format": 0.0, "length": 3, "truncated": False}) + "\n" for i in range(3)))
    with Tracker(run / "sft", config=config) as tracker:
        for step in range(1, 41):
            tracker.log({"loss/sft": 2.0 * math.exp(-step / 15) + 0.3, "optim/lr": 1e-4}, step)
    with Tracker(run / "grpo", config=config) as tracker:
        tracker.log_eval({"step": 0, "stage": "before", "accuracy": 0.2, "format_rate": 0.9,
                          "mean_length": 70.0, "n": 200})
        for step in range(1, grpo_steps + 1):
            tracker.log(_grpo_metrics(step, grpo_steps, rng), step)
            if step % 30 == 0 or step == 1:
                tracker.log_samples([_sample(step, i) for i in range(4)])
            if step % 20 == 0:
                name = "after" if step == grpo_steps else f"step {step}"
                tracker.log_eval({"step": step, "stage": name, "accuracy": 0.2 + 0.215 * step / grpo_steps,
                                  "format_rate": 0.95, "mean_length": 90.0, "n": 200})
    summary = {"before_after": [
        {"stage": "base", "accuracy": 0.12, "format_rate": 0.3, "n": 200},
        {"stage": "sft", "accuracy": 0.2, "format_rate": 0.9, "n": 200},
        {"stage": "grpo", "accuracy": 0.415, "format_rate": 0.95, "n": 200},
    ], "model": "smollm2-135m", "task": "subtraction", "wall_time_s": 3723.0, "peak_rss_gb": 2.4}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    run = make_synthetic_run(tmp_path_factory.mktemp("report"))
    path = write_report(run)
    return run, path.read_text(encoding="utf-8")


class _Collector(HTMLParser):
    """Every tag with its attributes, and the text inside <script> elements."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


# ----------------------------------------------------------------------------- data model


def test_load_run_orders_stages_as_they_ran(report):
    run_dir, _ = report
    run = load_run(run_dir)
    # alphabetical would put grpo before sft; the logged times put sft first. base/ holds only
    # per-example records (no `accuracy`), so it is no stage of its own
    assert [s.name for s in run.stages] == ["", "sft", "grpo"]
    assert len(run.stages[2].metrics) == 120
    # "before", "step 20", ..., "after" logged in grpo/ are one curve named grpo
    assert {r["_series"] for r in run.evals} == {"grpo"}


def test_before_after_from_eval_jsonl_and_verdict(report):
    run_dir, _ = report
    run = load_run(run_dir)
    assert [r["label"] for r in before_after(run)] == ["base", "sft", "grpo"]  # summary.json
    run.summary = {}  # without it: the first and last evaluation of each curve
    rows = before_after(run)
    assert [r["label"] for r in rows] == ["grpo @ step 0", "grpo @ step 120"]
    result = verdict(rows)
    assert result.kind == "improved"
    # 20.0% -> 41.5%: +21.5 points; noise 2*sqrt(.2*.8/200 + .415*.585/200) = 0.0898 -> 9.0 points
    assert "Accuracy rose from 20.0% to 41.5% (+21.5 points)" in result.text


def test_before_after_with_named_stages(tmp_path):
    # the stage names of the original contract: each is its own curve
    with Tracker(tmp_path) as tracker:
        for step, stage, acc in [(0, "base", 0.1), (0, "sft", 0.2), (10, "grpo", 0.3), (20, "grpo", 0.35)]:
            tracker.log_eval({"step": step, "stage": stage, "accuracy": acc, "n": 50})
    rows = before_after(load_run(tmp_path))
    assert [r["label"] for r in rows] == ["base", "sft", "grpo @ step 10", "grpo @ step 20"]
    assert [p.name for p in make_plots(tmp_path)] == ["eval_accuracy.png"]


def test_verdict_within_noise_is_not_an_improvement():
    rows = [{"label": "base", "accuracy": 0.12, "n": 200}, {"label": "grpo", "accuracy": 0.14, "n": 200}]
    result = verdict(rows)
    # +2.0 points; 2*sqrt(.12*.88/200 + .14*.86/200) = 2*0.0337 = 6.7 points > 2.0
    assert result.kind == "flat"
    assert "did not improve" in result.text and "±6.7 points" in result.notes[0]
    assert verdict(rows[::-1]).kind == "flat"
    worse = verdict([{"label": "a", "accuracy": 0.5, "n": 200}, {"label": "b", "accuracy": 0.2, "n": 200}])
    assert worse.kind == "worse" and "fell from 50.0% to 20.0% (-30.0 points)" in worse.text
    assert verdict(rows[:1]).kind == "none"


def test_split_completion():
    assert split_completion("<think>a</think><answer>3</answer>") == ("<think>a</think>", "<answer>3</answer>")
    assert split_completion("<think>a</think> 3") == ("<think>a</think>", " 3")
    assert split_completion("so 6 * 7 = 42 #### 42") == ("so 6 * 7 = 42 ", "#### 42")
    assert split_completion("no marker at all") == ("no marker at all", "")


def test_pick_samples_first_middle_last():
    samples = [{"step": s, "rewards": {"total": float(i)}} for s in (1, 2, 3, 4, 5) for i in range(4)]
    picked = pick_samples(samples, n_steps=3, per_step=2)
    assert [step for step, _ in picked] == [1, 3, 5]
    # per step: the best (total 3.0) and the worst (total 0.0), in logged order
    assert [s["rewards"]["total"] for s in picked[0][1]] == [0.0, 3.0]


def test_smooth_ignores_nan():
    # window 3, centred, NaN skipped: [(1+2)/2, (1+2)/2, NaN stays, (4)/1]
    np.testing.assert_allclose(smooth(np.array([1.0, 2.0, np.nan, 4.0]), 3), [1.5, 1.5, np.nan, 4.0])


# ----------------------------------------------------------------------------- plots + HTML


def test_make_plots_skips_absent_metrics(tmp_path):
    with Tracker(tmp_path) as tracker:
        for step in range(1, 6):
            tracker.log({"reward/total/mean": step / 10, "reward/total/std": 0.1}, step)
    paths = make_plots(tmp_path)
    assert [p.name for p in paths] == ["reward.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_every_plot_embedded(report):
    run_dir, page = report
    names = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert names == sorted(f"{n}.png" for n in ("reward", "train_rates", "eval_accuracy", "completion_length",
                                                "zero_signal", "policy", "loss", "throughput"))
    parser = _Collector()
    parser.feed(page)
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 8
    assert all(src.startswith("data:image/png;base64,") for src in images)


def test_report_loads_nothing_external(report):
    _, page = report
    parser = _Collector()
    parser.feed(page)
    for tag, attrs in parser.tags:
        for name in ("src", "href", "action", "data", "poster"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:)?//", value), f"<{tag} {name}={value!r}> loads something external"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)  # nor does the CSS
    assert not re.search(r"@import", page)


def test_model_text_is_escaped(report):
    _, page = report
    parser = _Collector()
    parser.feed(page)
    # exactly one script element: the report's own check script; the model's <script> is text
    assert sum(1 for tag, _ in parser.tags if tag == "script") == 1
    assert "alert(" not in "".join(parser.scripts)
    assert 'alert("pwned")' not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "evil.example" not in "".join(attrs.get("src", "") for _, attrs in parser.tags)


def test_report_content(report):
    _, page = report
    assert "Accuracy rose from 12.0% to 41.5% (+29.5 points) (base → grpo)" in page  # summary.json
    assert "rlvr report: smollm2-135m on subtraction" in page
    assert "12% of completions hit max_completion_length" in page  # the alarm
    assert 'class="part think"' in page and 'class="part answer"' in page
    assert "<h3>Step 1</h3>" in page and "<h3>Step 120</h3>" in page  # first and last sample steps
    assert "max_completion_length: 128" in page  # the config, verbatim
    assert "grpo @ step 20 (step 20)" in page  # the table of all evaluations


# ----------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium_args(binary: str, profile: Path) -> list[str]:
    """Headless, offline, no background chatter, a throwaway profile."""
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(report, tmp_path):
    run_dir, _ = report
    url = (run_dir / "report.html").resolve().as_uri()
    args = chromium_args(_chromium(), tmp_path / "profile")
    done = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    marker = re.search(r'<div id="rlvr-check"[^>]*>', done.stdout)
    assert marker, f"no check marker in the dumped DOM; stderr:\n{done.stderr[-2000:]}"
    images_ok = re.search(r'data-images-ok="(\d+)/(\d+)"', marker.group(0))
    errors = re.search(r'data-errors="(\d+)"', marker.group(0))
    assert images_ok.group(1) == images_ok.group(2) == "8"  # every plot decoded
    assert errors.group(1) == "0"
    shot = tmp_path / "report.png"
    subprocess.run([*args, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_report_of_an_empty_or_crashed_run(tmp_path):
    # nothing logged yet: the report still renders and says so
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    assert "No evaluation yet." in page and "No training metrics yet." in page
    # a NaN collapse at step 3 and a cut-short last line: plotted, with the NaN marked
    crashed = tmp_path / "crashed"
    with Tracker(crashed) as tracker:
        for step, reward in enumerate([0.1, 0.2, float("nan"), float("nan")], start=1):
            tracker.log({"reward/total/mean": reward, "loss/policy": reward}, step)
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "reward/tot')
    assert [p.name for p in make_plots(crashed)] == ["reward.png", "loss.png"]
    assert "Training curves" in write_report(crashed).read_text()


def test_missing_run_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        write_report(tmp_path / "nope")
