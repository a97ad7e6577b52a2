"""The report's plots: PNGs in RUN/plots/, one per question a user asks of a GRPO run.

Each plot is skipped when its metrics are absent. Noisy per-step curves (more than 30 points) are
drawn thin and faint with a moving average over them; non-finite values (a NaN collapse) are
marked with red crosses on the x axis instead of vanishing as gaps. Figures are built with
`matplotlib.figure.Figure` and the Agg canvas directly, never pyplot, so nothing global is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlvr.report.data import POSITION_STAGE, Run, load_run

PLOTS_DIR = "plots"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
STYLE = {
    "font.size": 9, "axes.titlesize": 10.5, "axes.titleweight": "bold", "axes.labelsize": 9,
    "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
    "axes.spines.right": False, "figure.dpi": 110, "savefig.dpi": 110,
}

CAPTIONS = {
    "reward": "Mean reward per step with a ±1 std band, for the total and for each reward function. "
    "Rising is good; a format reward rising while accuracy stays flat means the model learns the "
    "format only.",
    "train_rates": "Accuracy and format rate on the training batches. Format up while accuracy "
    "goes down is the classic sign of reward hacking.",
    "eval_accuracy": "Held-out evaluation. Dashed lines: stages evaluated once (e.g. the base model), "
    "as a reference; markers: evaluations during training.",
    "completion_length": "Completion length in tokens, and the share of completions cut off at the "
    "length limit. A truncated completion usually scores 0: if truncation is high, raise the "
    "maximum completion length.",
    "zero_signal": "Share of groups where every completion got the same reward. Such groups have "
    "zero advantage and teach nothing; near 100% means the task is too hard or too easy.",
    "policy": "How far the policy moves: KL to the reference model, the fraction of clipped "
    "tokens, entropy and gradient norm. KL climbing steadily while the reward stalls is a warning.",
    "loss": "Training losses. The GRPO policy loss hovers around 0 by construction (advantages "
    "average to zero): watch the reward, not this curve.",
    "throughput": "Time per step (generation vs. update) and tokens per second.",
}


# ----------------------------------------------------------------------------- data helpers


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one numeric key over `records`; records lacking it are skipped."""
    pairs = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
        and isinstance(r.get("step"), (int, float))
    ]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` points, ignoring non-finite values (which stay NaN)."""
    if window <= 1 or len(values) < 3:
        return values
    ok = np.isfinite(values)
    kernel = np.ones(window)
    total = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    count = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok & (count > 0), total / count, np.nan)  # a NaN step stays a gap


def _window(n: int) -> int:
    """Moving-average width: none below 30 points, then about 1/20 of the run."""
    return 1 if n < 30 else max(3, n // 20)


def _stages_with(run: Run, key: str) -> list[tuple[str, list[dict]]]:
    """(label, metrics) of each stage that logged `key`."""
    return [(s.name or "run", s.metrics) for s in run.stages if any(key in r for r in s.metrics)]


def _find_config_value(config: Any, names: tuple[str, ...]) -> Any:
    """The first value under any of `names`, searched depth-first through nested mappings."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key in names and isinstance(value, (int, float)):
                return value
        for value in config.values():
            found = _find_config_value(value, names)
            if found is not None:
                return found
    return None


# ----------------------------------------------------------------------------- drawing helpers


def _draw(ax, steps, values, *, label, color, scale=1.0, std=None, linestyle="-"):
    """One curve: raw (faint if smoothed), the moving average, a ±std band, crosses at NaN steps."""
    values = values * scale
    window = _window(len(values))
    shown = smooth(values, window)
    if window > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8, linestyle=linestyle)
    ax.plot(steps, shown, color=color, linewidth=1.8, label=label, linestyle=linestyle)
    if std is not None and len(std) == len(values):
        spread = smooth(std * scale, window)
        ax.fill_between(steps, shown - spread, shown + spread, color=color, alpha=0.15, linewidth=0)
    bad = ~np.isfinite(values)
    if bad.any():
        ax.plot(steps[bad], np.zeros(bad.sum()), "x", color="red", markersize=7, mew=2,
                transform=ax.get_xaxis_transform(), clip_on=False, label="non-finite (NaN/inf)")


def _grid(n_panels: int, title: str, panel_size=(4.9, 3.0)) -> tuple[Figure, list]:
    """A figure of `n_panels` axes, two per row (a lone panel gets the full width), at most
    9.8 in x 110 dpi = 1078 px wide: the report's column, so nothing is scaled down."""
    ncols = min(n_panels, 2)
    nrows = math.ceil(n_panels / ncols)
    size = (8.5, 3.3) if n_panels == 1 else panel_size
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig, axes[:n_panels]


def _finish(ax, *, title, ylabel, percent=False, legend=True):
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if percent:
        top = ax.get_ylim()[1]
        ax.set_ylim(0, min(105, max(10, top * 1.1)))
    handles, _ = ax.get_legend_handles_labels()
    if legend and handles:
        ax.legend(loc="best", frameon=False)


Panel = tuple[tuple[tuple[str, str], ...], str, str, float, bool]
"""((key, line label), ...), title, y label, scale, percent axis"""


def _stage_note(run: Run, keys) -> str:
    """" (grpo)" when the run has several stages but only one logged these keys (whose steps count)."""
    with_metrics = [s for s in run.stages if s.metrics]
    having = [s.name for s in with_metrics if any(k in r for k in keys for r in s.metrics)]
    return f" ({having[0]})" if len(with_metrics) > 1 and len(having) == 1 and having[0] else ""


def _panels(run: Run, title: str, panels: list[Panel]) -> Figure | None:
    """One panel per spec that some stage logged; a line per (stage, key)."""
    present = [p for p in panels if any(_stages_with(run, k) for k, _ in p[0])]
    if not present:
        return None
    fig, axes = _grid(len(present), title)
    for ax, (keys, panel_title, ylabel, scale, percent) in zip(axes, present):
        lines = [(stage, key, name) for key, name in keys for stage in _stages_with(run, key)]
        stage_count = len({stage[0] for stage, _, _ in lines})
        for i, ((stage, records), key, name) in enumerate(lines):
            steps, values = series(records, key)
            label = ", ".join(x for x in (stage if stage_count > 1 else "", name if len(keys) > 1 else "") if x)
            _draw(ax, steps, values, label=label or None, color=COLORS[i % len(COLORS)], scale=scale)
        note = _stage_note(run, [k for k, _ in keys])
        _finish(ax, title=panel_title + note, ylabel=ylabel, percent=percent)
    return fig


# ----------------------------------------------------------------------------- the plots


def plot_reward(run: Run) -> Figure | None:
    """Mean ± std of the total reward and of each reward function."""
    keys = sorted({k for s in run.stages for r in s.metrics for k in r
                   if k.startswith("reward/") and k.endswith("/mean")})
    names = [k.split("/")[1] for k in keys]
    names = (["total"] if "total" in names else []) + [n for n in names if n != "total"]
    if not names:
        return None
    fig, axes = _grid(len(names), "Reward per step (mean ± std over the batch)")
    for ax, name in zip(axes, names):
        stages = _stages_with(run, f"reward/{name}/mean")
        for i, (label, records) in enumerate(stages):
            steps, mean = series(records, f"reward/{name}/mean")
            std_steps, std = series(records, f"reward/{name}/std")
            std = std if np.array_equal(steps, std_steps) else None
            color = COLORS[i] if len(stages) > 1 else COLORS[names.index(name) % len(COLORS)]
            _draw(ax, steps, mean, label=label if len(stages) > 1 else None, color=color, std=std)
        title = ("total reward" if name == "total" else f"{name} reward") + _stage_note(run, [f"reward/{name}/mean"])
        _finish(ax, title=title, ylabel="reward")
    return fig


def plot_train_rates(run: Run) -> Figure | None:
    """Training-batch accuracy and format rate on one axis (reward hacking shows as divergence)."""
    keys = [("train/accuracy", "accuracy"), ("train/format_rate", "format rate")]
    stages = [s for s in run.stages if any(k in r for k, _ in keys for r in s.metrics)]
    if not stages:
        return None
    fig, (ax,) = _grid(1, "Training batches: accuracy and format rate")
    for j, stage in enumerate(stages):
        for i, (key, name) in enumerate(keys):
            steps, values = series(stage.metrics, key)
            if len(steps):
                label = f"{stage.name}: {name}" if len(stages) > 1 else name
                _draw(ax, steps, values, label=label, color=COLORS[i + 2 * j], scale=100)
    note = _stage_note(run, [k for k, _ in keys])
    _finish(ax, title="share of training completions" + note, ylabel="%", percent=True)
    return fig


def _eval_panel(ax, evals: list[dict], key: str, colors: dict[str, str], references: list[dict]) -> None:
    """One eval metric: a line per curve (`_series`); curves evaluated at one step, and summary rows
    of other stages (e.g. the base model), as dashed reference lines."""
    for name, color in colors.items():
        points = sorted((r.get("step") or 0, 100 * r[key]) for r in evals
                        if r["_series"] == name and isinstance(r.get(key), (int, float)))
        ref = next((r for r in references if r["stage"] == name), None)
        if not points and ref is not None and isinstance(ref.get(key), (int, float)):
            points = [(None, 100 * ref[key])]
        if not points:
            continue
        steps, values = zip(*points)
        if len(set(steps)) == 1:
            # a model evaluated once (the base model, the SFT result) is a level to beat, drawn
            # across the plot: its step counts on another stage's axis, so it gets no marker
            ax.axhline(values[-1], color=color, linestyle="--", linewidth=1.4, label=f"{name}: {values[-1]:.1f}%")
        else:
            ax.plot(steps, values, "o-", color=color, linewidth=1.8, markersize=5,
                    label=f"{name}: {values[0]:.1f}% → {values[-1]:.1f}%")
            ax.annotate(f"{values[-1]:.1f}%", (steps[-1], values[-1]), textcoords="offset points",
                        xytext=(4, 6), fontsize=8, color=color)


def plot_eval(run: Run) -> Figure | None:
    """Held-out accuracy (and format rate) over steps, one colour per curve."""
    evals = run.evals
    # summary.json rows for models not evaluated in any eval.jsonl here (the pipeline's base model)
    references = [r for r in run.summary.get("before_after", []) if isinstance(r, dict)
                  and isinstance(r.get("stage"), str) and not POSITION_STAGE.match(r["stage"])
                  and r["stage"] not in {e["_series"] for e in evals}]
    keys = [(k, t) for k, t in (("accuracy", "held-out accuracy"), ("format_rate", "held-out format rate"))
            if any(isinstance(r.get(k), (int, float)) for r in evals)]
    if not keys:
        return None
    names = list(dict.fromkeys([r["stage"] for r in references] + [r["_series"] for r in evals]))
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(names)}
    fig, axes = _grid(len(keys), "Held-out evaluation")
    for ax, (key, title) in zip(axes, keys):
        _eval_panel(ax, evals, key, colors, references)
        _finish(ax, title=title, ylabel="%", percent=True)
    return fig


def plot_length(run: Run) -> Figure | None:
    """Completion length (mean, max, the configured limit) and the truncated fraction."""
    keys = ("completion/length_mean", "completion/length_max", "completion/truncated_frac")
    stages = [s for s in run.stages if any(k in r for k in keys for r in s.metrics)]
    if not stages:
        return None
    fig, (ax_len, ax_trunc) = _grid(2, "Completion length")
    for i, stage in enumerate(stages):
        prefix = f"{stage.name}: " if len(stages) > 1 else ""
        for key, name, style in (("completion/length_mean", "mean", "-"), ("completion/length_max", "max", ":")):
            steps, values = series(stage.metrics, key)
            if len(steps):
                _draw(ax_len, steps, values, label=prefix + name, color=COLORS[i], linestyle=style)
        limit = _find_config_value(stage.config, ("max_completion_length", "max_new_tokens", "max_tokens"))
        if limit and len(series(stage.metrics, "completion/length_max")[0]):
            ax_len.axhline(limit, color="grey", linestyle="--", linewidth=1, label=f"{prefix}limit {limit:g}")
        steps, values = series(stage.metrics, "completion/truncated_frac")
        if len(steps):
            _draw(ax_trunc, steps, values, label=stage.name if len(stages) > 1 else None,
                  color=COLORS[i], scale=100)
    note = _stage_note(run, keys)
    _finish(ax_len, title="tokens per completion" + note, ylabel="tokens")
    _finish(ax_trunc, title="truncated at the length limit" + note, ylabel="% of completions", percent=True)
    return fig


def plot_zero_signal(run: Run) -> Figure | None:
    """Share of groups whose rewards are all equal (no learning signal)."""
    return _panels(run, "Groups with no learning signal", [
        ((("signal/zero_std_groups", ""),), "all rewards equal in the group", "% of groups", 100, True),
    ])


def plot_policy(run: Run) -> Figure | None:
    """KL, clip fraction, entropy, gradient norm."""
    return _panels(run, "Policy drift and optimisation", [
        ((("loss/kl", ""),), "KL to the reference", "KL (nats/token)", 1, False),
        ((("policy/clip_frac", ""),), "clipped tokens", "% of tokens", 100, True),
        ((("policy/entropy", ""),), "entropy", "nats/token", 1, False),
        ((("optim/grad_norm", ""),), "gradient norm (before clipping)", "L2 norm", 1, False),
    ])


def plot_loss(run: Run) -> Figure | None:
    """Every `loss/*` key except the KL (which is in the policy plot)."""
    keys = sorted({k for s in run.stages for r in s.metrics for k in r if k.startswith("loss/") and k != "loss/kl"})
    return _panels(run, "Losses", [(((k, ""),), k, "loss", 1, False) for k in keys])


def plot_throughput(run: Run) -> Figure | None:
    """Seconds per step by phase and tokens per second."""
    return _panels(run, "Speed", [
        ((("time/generate_s", "generation"), ("time/update_s", "update")), "time per step", "seconds", 1, False),
        ((("throughput/generate_tok_s", "generation"), ("throughput/update_tok_s", "update")),
         "throughput", "tokens / s", 1, False),
    ])


PLOTS: dict[str, Callable[[Run], Figure | None]] = {
    "reward": plot_reward,
    "train_rates": plot_train_rates,
    "eval_accuracy": plot_eval,
    "completion_length": plot_length,
    "zero_signal": plot_zero_signal,
    "policy": plot_policy,
    "loss": plot_loss,
    "throughput": plot_throughput,
}
"""file stem -> plot function, in the order the report shows them"""


def make_plots(run_dir: str | Path, run: Run | None = None) -> list[Path]:
    """Write every plot whose metrics exist to RUN/plots/<name>.png; return their paths in order."""
    run = run or load_run(run_dir)
    out_dir = Path(run_dir) / PLOTS_DIR
    paths = []
    with matplotlib.rc_context(STYLE):
        for name, plot in PLOTS.items():
            fig = plot(run)
            if fig is None:
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{name}.png"
            fig.savefig(path, facecolor="white")
            paths.append(path)
    return paths
