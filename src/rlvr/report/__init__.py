"""The run report: what a run directory says (`data`), its plots (`plots`), the HTML page (`html`).

    from rlvr.report import write_report
    write_report("runs/my-run")   # -> runs/my-run/report.html (+ runs/my-run/plots/*.png)
"""

from rlvr.report.data import (ControlComparison, Run, Stage, Verdict, alarms, before_after, compare_to_control,
                              control_of, load_run, self_rounds, verdict)
from rlvr.report.html import write_report
from rlvr.report.plots import make_plots

__all__ = [
    "ControlComparison", "Run", "Stage", "Verdict", "alarms", "before_after", "compare_to_control", "control_of",
    "load_run", "make_plots", "self_rounds", "verdict", "write_report",
]
