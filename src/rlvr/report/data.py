"""What a run directory says: the data model the report's plots (`plots`) and HTML (`html`) read.

This module only reads: it gathers a run directory and its stage subdirectories (`RUN/sft/`,
`RUN/grpo/`, ...) into a `Run`, builds the before/after table and states the verdict in plain
words. A change in accuracy smaller than two standard errors of the difference of two proportions,
2·sqrt(p1(1-p1)/n1 + p2(1-p2)/n2), is reported as "did not improve" (within sampling noise):
a 135M model going from 12% to 14% on 200 questions has learned nothing we can tell.

    from rlvr.report import write_report
    write_report("runs/my-run")   # -> runs/my-run/report.html (+ runs/my-run/plots/*.png)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlvr.tracking import CONFIG_FILE, EVAL_FILE, METRICS_FILE, SAMPLES_FILE, last_per_step, read_jsonl

SUMMARY_FILE = "summary.json"
RUN_FILES = (METRICS_FILE, EVAL_FILE, SAMPLES_FILE)
POSITION_STAGE = re.compile(r"^(before|after|start|end|final|step[ _-]?\d+|self round \d+)$", re.IGNORECASE)
"""eval stage names that say *when* within one training run ("before", "step 20", "after"), not *which*
model: such evaluations form one curve, named after their directory (see `series_name`)"""


def series_name(record: dict, dir_name: str) -> str:
    """The curve an evaluation belongs to: its stage ("base", "sft", "grpo"), or, for a position
    within a run ("before", "step 20", "after"), the stage directory it was logged in."""
    stage = str(record.get("stage", "eval"))
    return (dir_name or "training") if POSITION_STAGE.match(stage) else stage


@dataclass
class Stage:
    """One directory of the run: the run directory itself (name "") or a stage subdirectory."""

    name: str
    path: Path
    metrics: list[dict] = field(default_factory=list)
    """metrics.jsonl, one record per step (the last written wins), sorted by step"""
    evals: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    config_text: str | None = None
    """config.yaml as written (shown verbatim in the report)"""

    @property
    def config(self) -> dict:
        """config.yaml parsed ({} when absent or not a mapping)."""
        try:
            data = yaml.safe_load(self.config_text or "")
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}


@dataclass
class Run:
    """A run directory: its stages in the order they ran, and summary.json if present."""

    path: Path
    stages: list[Stage]
    summary: dict

    @property
    def evals(self) -> list[dict]:
        """Every evaluation of every stage, duplicates removed, in the order they were made; each
        with `_series`, the curve it belongs to (`series_name`)."""
        seen, out = set(), []
        for stage in self.stages:
            for record in stage.evals:
                key = json.dumps(
                    [record.get(k) for k in ("stage", "step", "accuracy", "format_rate", "n")]
                )
                if key not in seen:
                    seen.add(key)
                    out.append({**record, "_series": series_name(record, stage.name)})
        return sorted(out, key=lambda r: r.get("time") or 0.0) if all("time" in r for r in out) else out

    def model_task(self) -> tuple[str | None, str | None]:
        """The model and task names, from summary.json or else from any stage's config."""
        model, task = self.summary.get("model"), self.summary.get("task")
        for stage in self.stages:
            cfg = stage.config
            model = model or _name_of(cfg.get("model"))
            task = task or _name_of(cfg.get("task"))
        return model, task


def _name_of(value: Any) -> str | None:
    """A config entry as a display name: a string itself, or a mapping's `name`/`id`/`path`."""
    if isinstance(value, dict):
        for key in ("name", "id", "path", "model"):
            if isinstance(value.get(key), str):
                return value[key]
        return None
    return value if isinstance(value, str) else None


def load_stage(path: Path, name: str) -> Stage:
    """Read one directory's JSONL files and config.yaml."""
    config = path / CONFIG_FILE
    return Stage(
        name=name,
        path=path,
        metrics=last_per_step(read_jsonl(path / METRICS_FILE)),
        # one summary per evaluation; files of per-example records (no `accuracy`) are not evals
        evals=[r for r in read_jsonl(path / EVAL_FILE) if isinstance(r.get("accuracy"), (int, float))],
        samples=read_jsonl(path / SAMPLES_FILE),
        config_text=config.read_text(encoding="utf-8", errors="replace") if config.exists() else None,
    )


def _start_time(stage: Stage) -> float:
    """When a stage began (its first logged time), for ordering stages; unknown sorts last."""
    times = [r["time"] for r in stage.metrics + stage.evals if isinstance(r.get("time"), (int, float))]
    return min(times) if times else math.inf


def load_run(run_dir: str | Path) -> Run:
    """Gather a run directory and its immediate subdirectories that hold run files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    stages = [load_stage(run_dir, "")]
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any((sub / f).exists() for f in RUN_FILES):
            stage = load_stage(sub, sub.name)
            if stage.metrics or stage.evals or stage.samples:
                stages.append(stage)
    root, subs = stages[0], stages[1:]
    subs.sort(key=_start_time)  # the order they ran (sft before grpo), not alphabetical
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    return Run(path=run_dir, stages=[root, *subs], summary=summary if isinstance(summary, dict) else {})


# ----------------------------------------------------------------------------- before / after


def before_after(run: Run) -> list[dict]:
    """Rows of the before/after table: {"label", "stage", "step", "accuracy", "format_rate", "n",
    "mean_length"}. From summary.json's `before_after` if present; else from eval.jsonl, the first
    and the last evaluation of each curve (`series_name`; one row if evaluated at one step only)."""
    if isinstance(run.summary.get("before_after"), list):
        return [{"label": str(r.get("stage", "?")), **r} for r in run.summary["before_after"]]
    by_series: dict[str, list[dict]] = {}
    for record in run.evals:
        by_series.setdefault(record["_series"], []).append(record)
    rows = []
    for name, records in by_series.items():
        records = sorted(records, key=lambda r: r.get("step") or 0)
        first, last = records[0], records[-1]
        if first.get("step") == last.get("step"):
            rows.append({**last, "label": name})
        else:
            rows.append({**first, "label": f"{name} @ step {first.get('step')}"})
            rows.append({**last, "label": f"{name} @ step {last.get('step')}"})
    return rows


@dataclass
class Verdict:
    """The plain-language outcome of a run."""

    kind: str
    """"improved", "flat", "worse" or "none" (nothing to compare)"""
    text: str
    notes: list[str] = field(default_factory=list)
    delta_points: float | None = None


def _noise_points(first: dict, last: dict) -> float | None:
    """Two standard errors of the accuracy difference, in points; None without both n."""
    n1, n2 = first.get("n"), last.get("n")
    if not (isinstance(n1, (int, float)) and isinstance(n2, (int, float)) and n1 > 0 and n2 > 0):
        return None
    p1, p2 = first["accuracy"], last["accuracy"]
    return 200 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)


def verdict(rows: list[dict]) -> Verdict:
    """Compare the first and the last row that have an accuracy (fractions in [0, 1])."""
    rows = [r for r in rows if isinstance(r.get("accuracy"), (int, float))]
    if len(rows) < 2:
        text = "No evaluation yet." if not rows else (
            f"Only one evaluation ({rows[0]['label']}: {100 * rows[0]['accuracy']:.1f}%); nothing to compare yet."
        )
        return Verdict("none", text)
    first, last = rows[0], rows[-1]
    a, b = 100 * first["accuracy"], 100 * last["accuracy"]
    delta = b - a
    noise = _noise_points(first, last)
    span = f"({first['label']} → {last['label']})"
    if delta > (noise or 0.0) and delta > 0:
        kind, text = "improved", f"Accuracy rose from {a:.1f}% to {b:.1f}% ({delta:+.1f} points) {span}."
    elif delta < -(noise or 0.0):
        kind, text = "worse", f"Accuracy fell from {a:.1f}% to {b:.1f}% ({delta:+.1f} points) {span}."
    else:
        kind, text = "flat", f"Accuracy did not improve: {a:.1f}% → {b:.1f}% ({delta:+.1f} points) {span}."
    notes = []
    if noise is not None and kind == "flat" and delta != 0:
        notes.append(
            f"A change this small is within sampling noise: two standard errors of the difference "
            f"at n={first['n']:g} and n={last['n']:g} are ±{noise:.1f} points."
        )
    if noise is not None and first.get("n") != last.get("n"):
        notes.append(f"The two evaluations used different numbers of examples ({first['n']:g} vs {last['n']:g}).")
    kind, text = _under_majority(kind, text, last, notes)
    from rlvr.reasoning import reasoning_note

    if reasoning_note(last):
        notes.append(reasoning_note(last).strip())
    f1, f2 = first.get("format_rate"), last.get("format_rate")
    if isinstance(f1, (int, float)) and isinstance(f2, (int, float)):
        notes.append(f"Format rate went from {100 * f1:.1f}% to {100 * f2:.1f}%.")
        if f2 - f1 > 0.05 and kind == "worse":
            notes.append("Format rose while accuracy fell: the model may be gaming the format reward.")
    return Verdict(kind, text, notes, delta)


def _under_majority(kind: str, text: str, last: dict, notes: list[str]) -> tuple[str, str]:
    """An accuracy at or under the majority baseline is called that: an improvement becomes "flat"
    (no better than always giving the most common answer). Baselines go into the notes."""
    from rlvr.baselines import baseline_note, format_baselines

    note = baseline_note(last)
    if note is not None:
        notes.insert(0, note)
        if kind == "improved":
            kind = "flat"
            text = text.rstrip(".") + f", but no better than the majority baseline ({100 * last['majority_baseline']:.1f}%)."
    elif format_baselines(last):
        notes.append(f"Baselines: {format_baselines(last)}.")
    return kind, text


# ----------------------------------------------------------------------------- control runs

CONTROL_NAMES = {"random-reward": "random reward", "format-only": "format reward only"}


def control_of(run: Run) -> str | None:
    """The control this run is (run.control in its config.yaml, or summary.json's "control"), else None."""
    control = run.summary.get("control")
    for stage in run.stages:
        control = control or (stage.config.get("run") or {}).get("control")
    return control if control and control != "none" else None


@dataclass
class ControlComparison:
    """A run's gain beside its control run's (the same pipeline with the reward replaced)."""

    kind: str
    """"beyond-control" (the run beats its control by more than noise), "matched-by-control" (the
    control gets the gain too), "no-gain" (the run gained nothing beyond noise), "none" (no data)"""
    text: str
    rows: list[dict] = field(default_factory=list)
    """{"label", "before", "after", "change"} for the run and its control (fractions; change in points)"""
    notes: list[str] = field(default_factory=list)

    @property
    def same_start(self) -> bool:
        """Whether the run and its control start from the same accuracy (the same config and seed
        start from the same model; else their changes compare only with care)."""
        return _same_start(self.rows)


def _same_start(rows: list[dict]) -> bool:
    return len(rows) == 2 and abs(rows[0]["before"] - rows[1]["before"]) <= 1e-9


def last_stage(rows: list[dict]) -> tuple[dict, dict] | None:
    """The rows before and after the last stage (GRPO: `after SFT -> after GRPO` in a pipeline,
    `before -> after` in `rlvr train`): the stage a control run replaces the reward of."""
    rows = [r for r in rows if isinstance(r.get("accuracy"), (int, float))]
    return (rows[-2], rows[-1]) if len(rows) >= 2 else None


def compare_to_control(run_rows: list[dict], control_rows: list[dict], control: str = "control") -> ControlComparison:
    """Label the run's last-stage gain against the control's: a gain the control also gets (beyond
    noise) is called that, and the run's own gain counts only where it beats the control's final
    accuracy by more than two standard errors (`_noise_points`)."""
    ours, theirs = last_stage(run_rows), last_stage(control_rows)
    if ours is None or theirs is None:
        return ControlComparison("none", "No before/after pair in the run or the control to compare.")
    (b, a), (cb, ca) = ours, theirs
    gain, cgain = 100 * (a["accuracy"] - b["accuracy"]), 100 * (ca["accuracy"] - cb["accuracy"])
    name = CONTROL_NAMES.get(control, control)
    rows = [{"label": f"this run ({b['label']} → {a['label']})", "before": b["accuracy"], "after": a["accuracy"], "change": gain},
            {"label": f"control: {name}", "before": cb["accuracy"], "after": ca["accuracy"], "change": cgain}]
    notes = []
    if not _same_start(rows):
        notes.append(f"The two start from different accuracies ({100 * b['accuracy']:.1f}% vs {100 * cb['accuracy']:.1f}%): "
                     "compare the changes with care (the same config and seed start from the same model).")
    control_gains = cgain > (_noise_points(cb, ca) or 0.0) and cgain > 0
    if control_gains:
        notes.append(f"The control ({name}) also gains {cgain:+.1f} points: a gain of that size comes from training "
                     "with any reward of this shape, not from what the verifier rewards.")
    margin, noise = 100 * (a["accuracy"] - ca["accuracy"]), _noise_points(ca, a) or 0.0
    if not gain > (_noise_points(b, a) or 0.0) or gain <= 0:
        return ControlComparison("no-gain", f"The run gained {gain:+.1f} points, within noise: nothing for the "
                                 f"control to explain (control: {cgain:+.1f}).", rows, notes)
    if margin > noise and margin > 0:
        return ControlComparison("beyond-control", f"The run's gain ({gain:+.1f} points) beats the {name} control "
                                 f"({cgain:+.1f}) by {margin:.1f} points, beyond noise (±{noise:.1f}).", rows, notes)
    return ControlComparison("matched-by-control", f"The run's gain ({gain:+.1f} points) is also got by the {name} "
                             f"control ({cgain:+.1f}): {margin:+.1f} points apart, within noise (±{noise:.1f}). "
                             "It is not evidence that the reward taught the task.", rows, notes)


# ----------------------------------------------------------------------------- self warm-up


def self_rounds(run: Run) -> list[dict]:
    """The self warm-up's rounds (`sft_summary.json`'s "self_rounds" in any stage directory)."""
    for stage in run.stages:
        path = stage.path / "sft_summary.json"
        if path.exists():
            try:
                rounds = json.loads(path.read_text(encoding="utf-8")).get("self_rounds")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(rounds, list):
                return [r for r in rounds if isinstance(r, dict)]
    return []


# ----------------------------------------------------------------------------- alarms


def alarms(run: Run) -> list[dict]:
    """Every `alarm/<name>` raised: {"stage", "name", "first_step", "last_step", "count", "message"}."""
    out = []
    for stage in run.stages:
        found: dict[str, dict] = {}
        for record in stage.metrics:
            for key, value in record.items():
                if not key.startswith("alarm/") or not value:
                    continue
                name = key.removeprefix("alarm/")
                entry = found.setdefault(
                    name, {"stage": stage.name, "name": name, "first_step": record.get("step"), "count": 0}
                )
                entry.update(last_step=record.get("step"), message=str(value), count=entry["count"] + 1)
        out.extend(found.values())
    return out

