"""The run directory and a run's lifecycle: create it, save the final model, the summary and the
report, and stop cleanly on Ctrl-C.

Shared by the GRPO loop (`rlvr.trainer`), the SFT warm-up (`rlvr.sft`) and the pipeline; the
checkpoints themselves are `rlvr.checkpoint`'s.

    RUN/config.yaml          the resolved config (written first)
    RUN/metrics.jsonl ...    tracking (rlvr.tracking)
    RUN/checkpoints/         rlvr.checkpoint
    RUN/final/adapter        the LoRA adapter alone (when training LoRA)
    RUN/final/merged         a full model, loadable with from_pretrained
    RUN/summary.json         the before/after table, wall time, peak memory
    RUN/report.html          rlvr.report
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.config import Config, ConfigError

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    eval_rows: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    peak_rss_gb: float = 0.0
    model: Any = field(default=None, repr=False, compare=False)
    """the trained policy in memory (a peft model with LoRA; None on processes other than the main one)"""


def peak_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)


def prepare_run_dir(cfg: Config, resume: bool, write: bool = True) -> Path:
    """Create the run directory and save the resolved config; refuse to mix two runs' files.

    write=False only checks (the processes other than the main one of a distributed run).
    """
    run_dir = Path(cfg.run.output_dir)
    if run_dir.exists() and (run_dir / "metrics.jsonl").exists() and not resume:
        raise ConfigError(f"run directory {run_dir} already holds a run: pass --resume to continue it, "
                          "or choose another run.output_dir")
    if not write:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    return run_dir


def recorded_config(cfg: Config, task=None) -> Config:
    """The config as the run records it (config.yaml, trackers): when a task object was passed in and
    the config still names the default task, the passed task's name, not `subtraction`."""
    import copy

    from rlvr.config import TaskConfig

    name = getattr(task, "name", None)
    if task is None or not name or cfg.task.name != TaskConfig().name or name == cfg.task.name:
        return cfg
    recorded = copy.deepcopy(cfg)
    recorded.task.name = str(name)
    return recorded


def save_final(policy, tokenizer, run_dir: Path) -> None:
    """The trained model in Hugging Face format: the adapter alone, and a merged full copy."""
    from peft import PeftModel

    from rlvr.models import merged_copy, save_pretrained_atomic

    final = run_dir / "final"
    if isinstance(policy, PeftModel):
        save_pretrained_atomic(policy, tokenizer, final / "adapter")
    save_pretrained_atomic(merged_copy(policy), tokenizer, final / "merged")


def before_after(rows: list[dict]) -> list[dict]:
    """The evaluation rows of the start and the end of a run (all rows when it has neither)."""
    keep = [r for r in rows if r["stage"] in ("before", "after")]
    return keep if len(keep) >= 1 else rows


def write_report_safely(run_dir: Path) -> Path | None:
    """The HTML report; a failure here is logged, never allowed to lose a finished run."""
    from rlvr.report import write_report

    try:
        return write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the report is a view of files already written
        log.warning("could not write the report for %s: %s (run `rlvr report %s` to retry)", run_dir, err, run_dir)
        return None


def write_summary(run_dir: Path, result: TrainResult, cfg: Config, task_name: str | None = None) -> None:
    """RUN/summary.json: model, task (the one trained on, `task_name`, else the config's), steps, the
    before/after table, wall time and peak memory."""
    summary = {"model": cfg.model.name, "task": task_name or cfg.task.name, "steps": result.steps,
               "before_after": before_after(result.eval_rows), "wall_time_s": result.wall_time_s,
               "peak_rss_gb": result.peak_rss_gb, "control": cfg.run.control}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


class CtrlC:
    """Ctrl-C as a flag as well as the usual KeyboardInterrupt, so that it cannot be lost.

    Python raises KeyboardInterrupt wherever the main thread happens to be. If that is inside a
    finaliser (a `__del__`, a weakref callback), CPython prints "Exception ignored" and the interrupt
    is gone, and the run would go on training (tests/test_interrupt.py shows it). The flag survives;
    the loop checks it before every step. Installed only over Python's default handler, in the main
    thread: a process started with SIGINT ignored (a shell's background job, `rlvr train &`) keeps
    ignoring it, as Python itself does.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> "CtrlC":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its exception was swallowed."""
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
