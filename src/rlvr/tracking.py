"""Experiment tracking: the run directory's JSONL logs, TensorBoard, and W&B / trackio / MLflow via accelerate.

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

External trackers (`run.report_to`, TRL's names: wandb, trackio, mlflow) are accelerate's
(`accelerate.tracking.WandBTracker`, `TrackioTracker`, `MLflowTracker`): rlvr only chooses the project
and run names and hands them the numbers; the sample completions go to wandb and trackio as a table
(`samples`, one per logged step). TensorBoard stays rlvr's own writer into the run directory (it
hides redone steps on resume; accelerate's writes into a sub-directory and knows no resume).
A tracker's package is imported when asked for: a missing one is an error at construction, naming
the extra to install, before any training time is spent. A tracker that fails later is warned
about once and dropped; the run and its JSONL go on.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
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
TABLE_TRACKERS = ("wandb", "trackio")
"""the trackers that get the sample completions as a table (their package's `Table`)."""

log = logging.getLogger(__name__)


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

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _wanted(report_to: str | Iterable[Any]) -> list[Any]:
    """`report_to` as TRL reads it: a name or a list of names; "all" is every external tracker
    installed; "tensorboard" (always on here) and "none" add nothing."""
    items = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in items:
        installed = [n for n in EXTERNAL_TRACKERS if importlib.util.find_spec(n) is not None]
        items = [n for n in items if n != "all"] + installed
    return [n for n in dict.fromkeys(items) if n not in ("tensorboard", "none")]


def _import_tracker(name: str) -> None:
    """Check that an external tracker's package imports, or fail with the pip command that installs it."""
    if name not in EXTERNAL_TRACKERS:
        choices = ", ".join(("tensorboard", "none", "all") + EXTERNAL_TRACKERS)
        raise ValueError(f"--report-to {name}: unknown tracker; choose from {choices}")
    try:
        importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f"--report-to {name}: the {name} package is not installed; pip install 'rlvr[{name}]'"
        ) from None


def _start_tracker(item: Any, run_dir: Path, config: dict | None, resume: bool) -> Any:
    """accelerate's tracker for the name `item` (or `item` itself, a GeneralTracker), started, with
    the run's config; its console chatter goes to stderr.

    The project is WANDB_PROJECT / TRACKIO_PROJECT / MLFLOW_EXPERIMENT_NAME, else "rlvr"; the run is
    named after the run directory. On resume the trackio run goes on (the same name).
    """
    from accelerate import tracking
    from accelerate.state import PartialState

    PartialState()  # accelerate's trackers log through its logger, which needs its state (1 process: no-op)
    run_name, config = run_dir.resolve().name, config or {}
    if item == "wandb":
        tracker = tracking.WandBTracker(os.environ.get("WANDB_PROJECT", "rlvr"), name=run_name,
                                        dir=str(run_dir), config=config)
    elif item == "trackio":
        tracker = tracking.TrackioTracker(os.environ.get("TRACKIO_PROJECT", "rlvr"), name=run_name,
                                          config=config, resume="allow" if resume else "never")
    elif item == "mlflow":
        tracker = tracking.MLflowTracker(experiment_name="rlvr", run_name=run_name)
    else:
        tracker = item
    tracker.main_process_only = False  # rlvr makes trackers on its main process only
    with contextlib.redirect_stdout(sys.stderr):  # as in _Guarded
        tracker.start()
        if item == "mlflow":  # wandb and trackio took the config at start; MLflow takes flat params
            tracker.store_init_configuration(_flatten(config))
    return tracker


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


class _Guarded:
    """One tracker behind a guard: its first exception is a warning and turns it off for the rest
    of the run, which goes on (the JSONL files hold every value)."""

    def __init__(self, name: str, tracker: Any):
        self.name, self.tracker = name, tracker

    def _call(self, what: str, action: Any) -> None:
        if self.tracker is None:
            return
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout may carry run.log_format=json lines
                action(self.tracker)
        except Exception as err:  # a tracker's failure is never the run's
            self.tracker = None
            log.warning("tracker %s failed in %s (%s: %s); rlvr stops sending to it and the run goes "
                        "on (metrics.jsonl, eval.jsonl and samples.jsonl have everything)",
                        self.name, what, type(err).__name__, err)

    def log(self, values: dict[str, Any], step: int) -> None:
        self._call("log", lambda tracker: tracker.log(values, step=step))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A table of rows, for the trackers that have one (wandb.Table, trackio.Table)."""
        if self.name in TABLE_TRACKERS:
            self._call("log_table", lambda tracker: tracker.log(
                {key: importlib.import_module(self.name).Table(columns=columns, data=rows)}, step=step))

    def finish(self) -> None:
        # trackio.finish(), not accelerate's run.finish(): that leaves trackio's current run set, and
        # trackio's exit hook finishes it a second time (printing to stdout)
        if self.name == "trackio":
            self._call("finish", lambda tracker: importlib.import_module("trackio").finish())
        else:
            self._call("finish", lambda tracker: tracker.finish())
        self.tracker = None


def _table(records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Sample records as (columns, rows); a dict value becomes a column per key (`rewards/total`)."""
    rows = []
    for record in records:
        row: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, Mapping):
                row.update({f"{key}/{k}": _plain(v) for k, v in value.items()})
            else:
                row[key] = _plain(value)
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns, [[row.get(column) for column in columns] for row in rows]


# ----------------------------------------------------------------------------- Tracker


class Tracker:
    """Writes a run's metrics, evaluations and samples; a context manager.

    Args:
        run_dir: the run directory (created if missing).
        report_to: external trackers besides the always-on JSONL + TensorBoard, with TRL's names:
            "wandb", "trackio", "mlflow", "all" (those installed); "tensorboard" and "none" change
            nothing. An item may be an `accelerate.tracking.GeneralTracker` already made (a custom
            tracker; rlvr starts it).
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
        report_to: str | Iterable[Any] = (),
        config: dict | None = None,
        is_main: bool = True,
        purge_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self._files: dict[str, Any] = {}
        self._sinks: list[_Guarded] = []
        self._purged: set[str] = set()  # files whose earlier lines of redone steps are gone
        if not is_main:
            return
        wanted = _wanted(report_to)
        for name in wanted:  # fail before any side effect
            if isinstance(name, str):
                _import_tracker(name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for file_name in (METRICS_FILE, EVAL_FILE, SAMPLES_FILE):
            path = self.run_dir / file_name
            _repair_tail(path)
            if purge_step is not None:
                _purge_from(path, purge_step)
                self._purged.add(file_name)
        if config is not None:
            self._write_config(config)
        self._sinks.append(_Guarded("tensorboard", _TensorBoardSink(self.run_dir, purge_step)))
        try:
            for item in wanted:
                tracker = _start_tracker(item, self.run_dir, config, resume=purge_step is not None)
                self._sinks.append(_Guarded(getattr(tracker, "name", type(tracker).__name__), tracker))
        except BaseException:
            self.close()
            raise

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
        """Sample completions, one line each; `step` (if given) is added to records lacking one.
        They go to wandb and trackio as a table, `samples`, at their step."""
        if not self.is_main:
            return
        records = [{"step": int(step), **r} if step is not None and "step" not in r else r for r in records]
        for record in records:
            self._append(SAMPLES_FILE, record)
        table_step = step if step is not None else (records[0].get("step") if records else None)
        if isinstance(table_step, int):
            columns, rows = _table(records)
            for sink in self._sinks:
                sink.log_table("samples", columns, rows, table_step)

    def close(self) -> None:
        """Close the files and every tracker; safe to call twice."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.finish()

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
