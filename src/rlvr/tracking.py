"""Experiment tracking: the run directory's JSONL logs, TensorBoard, and optional W&B / trackio / MLflow.

The JSONL files are the source of truth (the report is built from them alone), so they are written
first, one line per call, flushed at once: a crash loses at most the line being written.

    RUN/metrics.jsonl   one object per training step: {"step", "time", "reward/total/mean", ...}
    RUN/eval.jsonl      one object per evaluation:    {"step", "stage", "accuracy", "format_rate", ...}
    RUN/samples.jsonl   sample completions:           {"step", "prompt", "completion", "rewards", ...}
    RUN/events.out.tfevents.*   TensorBoard scalars (`tensorboard --logdir RUN`)

On resume the files are appended to. A line cut short by a crash is removed before appending (so
the file stays valid JSONL), and `read_jsonl` skips a cut-short last line. Steps logged twice
(after a crash the trainer redoes the steps since its last checkpoint) are purged: at construction
when the first redone step is known (`purge_step`), otherwise at the first line written to each file
(a run killed before its first checkpoint starts again from step 0: writing step s drops the old
lines of steps >= s). When reading, `last_per_step` resolves any duplicate left (the later line wins).

External trackers are imported only when asked for in `report_to`; a missing one is an error at
construction, before any training time is spent.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.yaml"

EXTERNAL_TRACKERS = ("wandb", "trackio", "mlflow")
"""names accepted in `report_to` besides "tensorboard" (always on) and "none"."""


# ----------------------------------------------------------------------------- JSONL helpers


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file into a list of objects; a missing file reads as [].

    A last line that does not parse (a crash in the middle of a write) is skipped. A bad line
    elsewhere is real corruption and raises ValueError naming the file and line.
    Non-standard `NaN` / `Infinity` (how Python writes a NaN loss) are accepted.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break  # cut short by a crash mid-write
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from None
        if isinstance(obj, dict):
            records.append(obj)
    return records


def last_per_step(records: Iterable[Mapping]) -> list[dict]:
    """Keep one record per `step` (the last one written), sorted by step.

    After a resume the trainer redoes the steps since its last checkpoint; the redone steps are
    the ones the final model descends from, so the later line wins.
    """
    by_step: dict[Any, dict] = {}
    for record in records:
        by_step[record.get("step")] = dict(record)
    return sorted(by_step.values(), key=lambda r: (r.get("step") is None, r.get("step") or 0))


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (no trailing newline) so that appended lines stay valid JSONL."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    last_nl = data.rfind(b"\n")
    tail = data[last_nl + 1 :]
    try:
        json.loads(tail)
        keep = data + b"\n"  # complete object, only the newline was lost
    except ValueError:
        keep = data[: last_nl + 1]
    path.write_bytes(keep)


def _purge_from(path: Path, step: int, only_if_needed: bool = False) -> None:
    """Rewrite `path` without records whose step is >= `step` (atomically, via a temp file).

    only_if_needed: leave the file untouched when it holds no such record.
    """
    if not path.exists():
        return
    records = read_jsonl(path)
    kept = [r for r in records if not (isinstance(r.get("step"), int) and r["step"] >= step)]
    if only_if_needed and len(kept) == len(records):
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(_dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars -> Python numbers; anything else unchanged."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def _dumps(record: Mapping) -> str:
    """One JSON line; NaN stays NaN (a NaN loss must be visible), unknown objects become str."""
    return json.dumps({k: _plain(v) for k, v in record.items()}, ensure_ascii=False, default=str)


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of `metrics` as floats (strings, None, lists and bools are skipped)."""
    out = {}
    for key, value in metrics.items():
        value = _plain(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


# ----------------------------------------------------------------------------- sinks


class _TensorBoardSink:
    """Scalars into TensorBoard event files in the run directory itself."""

    def __init__(self, run_dir: Path, purge_step: int | None):
        self.run_dir, self.purge_step = run_dir, purge_step
        self.writer = None

    def log(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:  # opened at the first step, which (if not given) is the one to purge from
            from torch.utils.tensorboard import SummaryWriter

            earlier = any(self.run_dir.glob("events.out.tfevents.*"))
            purge = self.purge_step if self.purge_step is not None else (step if earlier else None)
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _WandbSink:
    """Weights & Biases; honours WANDB_PROJECT / WANDB_MODE (offline works without network)."""

    def __init__(self, module: Any, run_dir: Path, config: dict | None):
        self.wandb = module
        self.run = module.init(
            project=os.environ.get("WANDB_PROJECT", "rlvr"),
            name=run_dir.resolve().name,
            dir=str(run_dir),
            config=config or {},
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _TrackioSink:
    """trackio (Hugging Face's local-first tracker); honours TRACKIO_PROJECT."""

    def __init__(self, module: Any, run_dir: Path, config: dict | None):
        self.trackio = module
        module.init(
            project=os.environ.get("TRACKIO_PROJECT", "rlvr"),
            name=run_dir.resolve().name,
            config=config or {},
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


class _MlflowSink:
    """MLflow; honours MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME. Config goes in as params."""

    def __init__(self, module: Any, run_dir: Path, config: dict | None):
        self.mlflow = module
        self.run = module.start_run(run_name=run_dir.resolve().name)
        params = {k: str(v)[:500] for k, v in _flatten(config or {}).items()}
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            module.log_params(dict(list(params.items())[start : start + 100]))

    def log(self, values: dict[str, float], step: int) -> None:
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        self.mlflow.log_metrics(finite, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_SINK_CLASSES = {"wandb": _WandbSink, "trackio": _TrackioSink, "mlflow": _MlflowSink}


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _import_tracker(name: str) -> Any:
    """Import an external tracker's package, or fail with the pip command that installs it."""
    if name not in EXTERNAL_TRACKERS:
        choices = ", ".join(("tensorboard", "none") + EXTERNAL_TRACKERS)
        raise ValueError(f"--report-to {name}: unknown tracker; choose from {choices}")
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f"--report-to {name}: the {name} package is not installed; pip install 'rlvr[{name}]'"
        ) from None


# ----------------------------------------------------------------------------- Tracker


class Tracker:
    """Writes a run's metrics, evaluations and samples; a context manager.

    Args:
        run_dir: the run directory (created if missing).
        report_to: external trackers besides the always-on JSONL + TensorBoard: any of "wandb",
            "trackio", "mlflow" ("tensorboard" and "none" are accepted and change nothing).
        config: the resolved config; written to config.yaml if that file does not exist yet,
            and passed to the external trackers.
        is_main: False on non-main processes of a multi-process run: every method does nothing.
        purge_step: on resume, the first step to be redone: records with step >= purge_step are
            removed from the JSONL files and hidden in TensorBoard. None: the first step written to
            each file is the first redone (nothing is removed in a new run).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        report_to: Iterable[str] = (),
        config: dict | None = None,
        is_main: bool = True,
        purge_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self._files: dict[str, Any] = {}
        self._sinks: list[Any] = []
        self._purged: set[str] = set()  # files whose earlier lines of redone steps are gone
        if not is_main:
            return
        names = [n for n in dict.fromkeys(report_to) if n not in ("tensorboard", "none")]
        modules = {name: _import_tracker(name) for name in names}  # fail before any side effect
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for file_name in (METRICS_FILE, EVAL_FILE, SAMPLES_FILE):
            path = self.run_dir / file_name
            _repair_tail(path)
            if purge_step is not None:
                _purge_from(path, purge_step)
                self._purged.add(file_name)
        if config is not None:
            self._write_config(config)
        self._sinks.append(_TensorBoardSink(self.run_dir, purge_step))
        for name, module in modules.items():
            self._sinks.append(_SINK_CLASSES[name](module, self.run_dir, config))

    def _write_config(self, config: dict) -> None:
        path = self.run_dir / CONFIG_FILE
        if not path.exists():
            import yaml

            path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def _append(self, file_name: str, record: Mapping) -> None:
        handle = self._files.get(file_name)
        if file_name not in self._purged and isinstance(record.get("step"), int):
            _purge_from(self.run_dir / file_name, record["step"], only_if_needed=True)
            self._purged.add(file_name)
        if handle is None:
            handle = open(self.run_dir / file_name, "a", encoding="utf-8")  # noqa: SIM115
            self._files[file_name] = handle
        handle.write(_dumps(record) + "\n")
        handle.flush()

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """One training step: a line in metrics.jsonl, numeric values to every tracker."""
        if not self.is_main:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({k: v for k, v in metrics.items() if k not in ("step", "time")})
        self._append(METRICS_FILE, record)
        values = scalars({k: v for k, v in record.items() if k not in ("step", "time")})
        for sink in self._sinks:
            sink.log(values, int(step))

    def log_eval(self, record: Mapping[str, Any]) -> None:
        """One evaluation (`step`, `stage`, `accuracy`, ...): a line in eval.jsonl; its numbers
        go to the trackers as `eval/<stage>/<key>` at its step."""
        if not self.is_main:
            return
        record = {**record, "time": record.get("time", time.time())}
        self._append(EVAL_FILE, record)
        stage = record.get("stage", "eval")
        skip = ("step", "time", "n")
        values = scalars({f"eval/{stage}/{k}": v for k, v in record.items() if k not in skip})
        for sink in self._sinks:
            sink.log(values, int(record.get("step", 0)))

    def log_samples(self, records: Iterable[Mapping[str, Any]], step: int | None = None) -> None:
        """Sample completions, one line each; `step` (if given) is added to records lacking one."""
        if not self.is_main:
            return
        for record in records:
            if step is not None and "step" not in record:
                record = {"step": int(step), **record}
            self._append(SAMPLES_FILE, record)

    def close(self) -> None:
        """Close the files and every tracker; safe to call twice."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- console


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%" if abs(value) >= 0.1 or value == 0 else f"{100 * value:.1f}%"


def format_step_line(metrics: Mapping[str, Any], step: int, total_steps: int) -> str:
    """A compact one-line summary of a training step for the console; missing keys are left out:

        step  12/200 | reward 0.410±0.300 | acc 35% | zero-signal 25% | len 87 (max 256, trunc 3.0%)
        | kl 0.00123 | 1,234 tok/s                        (one line; `ALARM <names>` appended if any)
    """
    m = scalars(metrics)
    width = len(str(total_steps))
    parts = [f"step {step:>{width}}/{total_steps}"]
    if "reward/total/mean" in m:
        std = m.get("reward/total/std")
        parts.append(f"reward {m['reward/total/mean']:.3f}" + (f"±{std:.3f}" if std is not None else ""))
    if "train/accuracy" in m:
        parts.append(f"acc {_pct(m['train/accuracy'])}")
    if "signal/zero_std_groups" in m:
        parts.append(f"zero-signal {_pct(m['signal/zero_std_groups'])}")
    if "completion/length_mean" in m:
        extra = []
        if "completion/length_max" in m:
            extra.append(f"max {m['completion/length_max']:.0f}")
        if m.get("completion/truncated_frac"):
            extra.append(f"trunc {_pct(m['completion/truncated_frac'])}")
        parts.append(f"len {m['completion/length_mean']:.0f}" + (f" ({', '.join(extra)})" if extra else ""))
    if "loss/kl" in m:
        parts.append(f"kl {m['loss/kl']:.3g}")
    if "throughput/generate_tok_s" in m:
        parts.append(f"{m['throughput/generate_tok_s']:,.0f} tok/s")
    alarms = [str(k).removeprefix("alarm/") for k, v in metrics.items() if str(k).startswith("alarm/") and v]
    if alarms:
        parts.append("ALARM " + ", ".join(alarms))
    return " | ".join(parts)
