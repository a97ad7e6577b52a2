"""The self-contained HTML report: RUN/report.html, one file that opens anywhere, offline.

Everything is inline: CSS, the plots as base64 `data:` URIs, and one tiny script. A
Content-Security-Policy meta tag forbids every external load and allows only that script (by its
SHA-256), so even if model text slipped past escaping it could not fetch or run anything. All
model text (prompts, completions, answers) goes through `html.escape`: model output is untrusted.

The script, on window load, appends `<div id="rlvr-check" data-images-ok="N/M" data-errors="K">`
(images decoded / images, resource + script + CSP errors) so a headless browser can check the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import re
from pathlib import Path

import rlvr
from rlvr.report.data import (CONTROL_NAMES, ControlComparison, Run, Stage, Verdict, alarms, before_after,
                              compare_to_control, control_of, load_run, self_rounds, verdict)
from rlvr.report.plots import CAPTIONS, make_plots

REPORT_FILE = "report.html"
MAX_TEXT_CHARS = 4000
"""longer model texts are cut (with a note) so one runaway completion cannot bloat the report"""

CHECK_SCRIPT = """
(function () {
  var errors = 0;
  function count() { errors += 1; }
  window.addEventListener("error", count, true);
  document.addEventListener("securitypolicyviolation", count);
  window.addEventListener("load", function () {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok += 1; }
    }
    var mark = document.createElement("div");
    mark.id = "rlvr-check";
    mark.hidden = true;
    mark.setAttribute("data-images-ok", ok + "/" + imgs.length);
    mark.setAttribute("data-errors", String(errors));
    document.body.appendChild(mark);
  });
})();
"""

CSS = """
:root { --fg: #1d2430; --muted: #5f6b7a; --line: #dde3ea; --bg: #f6f8fa; --card: #fff;
  --good: #1b7f3b; --good-bg: #e6f4ea; --bad: #b3261e; --bad-bg: #fdecea; --warn: #8a5a00;
  --warn-bg: #fff4dc; --think-bg: #f1f3f9; --answer-bg: #e8f5e9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 34px 0 12px;
  border-bottom: 2px solid var(--line); padding-bottom: 4px; } h3 { font-size: 16px; margin: 20px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 22px; margin: 8px 0 0; padding: 0; list-style: none; }
.facts b { color: var(--muted); font-weight: 600; margin-right: 4px; }
.verdict { border-left: 6px solid; border-radius: 6px; padding: 14px 18px; margin: 18px 0; background: var(--card); }
.verdict p { margin: 4px 0; } .verdict .main { font-size: 19px; font-weight: 600; }
.verdict.improved { border-color: var(--good); background: var(--good-bg); }
.verdict.worse { border-color: var(--bad); background: var(--bad-bg); }
.verdict.flat { border-color: #c98a00; background: var(--warn-bg); }
.verdict.none { border-color: var(--muted); }
.alarms { background: var(--bad-bg); border: 1px solid #f3b8b3; border-radius: 6px; padding: 10px 16px; }
.alarms h3 { margin: 4px 0; } .alarms ul { margin: 6px 0; }
table { border-collapse: collapse; background: var(--card); width: 100%; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 6px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #eef1f5; }
td.pos { color: var(--good); background: var(--good-bg); font-weight: 700; }
td.neg { color: var(--bad); background: var(--bad-bg); font-weight: 700; }
figure { margin: 0 0 22px; background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
details { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
details.prompt { padding: 3px 10px; margin: 4px 0; font-size: 13.5px; }
details.prompt .preview { font-weight: 400; color: var(--muted); margin-left: 6px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 13px/1.45 ui-monospace, Menlo, Consolas, monospace; }
.sample { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.sample .meta { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; margin-bottom: 8px; font-size: 14px; }
.badge { border-radius: 4px; padding: 1px 8px; font-weight: 700; font-size: 13px; }
.badge.ok { background: var(--good-bg); color: var(--good); } .badge.no { background: var(--bad-bg); color: var(--bad); }
.chip { background: #eef1f5; border-radius: 10px; padding: 1px 9px; font-size: 13px; }
code { background: #eef1f5; border-radius: 3px; padding: 0 5px; font: 13px ui-monospace, Menlo, Consolas, monospace; }
.part { border-radius: 5px; padding: 8px 10px; margin-top: 6px; }
.part .label { font-size: 11px; font-weight: 700; letter-spacing: .05em; text-transform: uppercase; color: var(--muted); margin-bottom: 3px; }
.think { background: var(--think-bg); border-left: 4px solid #8c9bc4; }
.answer { background: var(--answer-bg); border-left: 4px solid #4caf50; }
.cut { color: var(--muted); font-style: italic; }
.toolcall { background: #fff6e0; border-left: 4px solid #e0a030; }
.toolresult { background: #eef3f8; border-left: 4px solid #6b8db5; }
.toolresult.error { background: var(--bad-bg); border-left-color: var(--bad); }
.userturn { background: #f3f3f3; border-left: 4px solid #999; }
footer { color: var(--muted); font-size: 13px; margin-top: 40px; }
"""


def esc(value: object) -> str:
    """Escape anything for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def _pct(value: object) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "–"


# ----------------------------------------------------------------------------- completions


ANSWER_MARKERS = ("<answer>", "\\boxed{", "####", "answer:")
THINK_ENDS = ("</think>", "</reasoning>")


def split_completion(text: str) -> tuple[str, str]:
    """Split a completion into (reasoning, answer part) for display.

    The answer part starts at the last `<answer>` tag; failing that, right after `</think>`;
    failing that, at the last `\\boxed{`, `####` or `Answer:`. No marker: all is reasoning.
    """
    lower = text.lower()
    start = lower.rfind("<answer>")
    if start < 0:
        ends = [(lower.rfind(tag), tag) for tag in THINK_ENDS if tag in lower]
        if ends:
            pos, tag = max(ends)
            start = pos + len(tag)
    if start < 0:
        start = max(lower.rfind(marker) for marker in ANSWER_MARKERS[1:])
    if start < 0:
        return text, ""
    return text[:start], text[start:]


def _text_block(text: str) -> str:
    """Escaped <pre>, cut at MAX_TEXT_CHARS with a note."""
    cut = ""
    if len(text) > MAX_TEXT_CHARS:
        cut = f'<div class="cut">… {len(text) - MAX_TEXT_CHARS:,} more characters not shown</div>'
        text = text[:MAX_TEXT_CHARS]
    return f"<pre>{esc(text)}</pre>{cut}"


def pick_samples(samples: list[dict], n_steps: int = 3, per_step: int = 3) -> list[tuple[int, list[dict]]]:
    """Samples at the first, middle and last logged steps; per step the best and the worst by
    total reward, alternately, shown in the order they were logged."""
    steps = sorted({s.get("step") for s in samples if isinstance(s.get("step"), int)})
    if not steps:
        return [(None, samples[:per_step])] if samples else []
    chosen = sorted({steps[round(i * (len(steps) - 1) / max(1, n_steps - 1))] for i in range(n_steps)})
    out = []
    for step in chosen:
        at_step = [(i, s) for i, s in enumerate(samples) if s.get("step") == step]
        ranked = sorted(at_step, key=lambda p: -_total(p[1]))
        picked = []
        while ranked and len(picked) < per_step:
            picked.append(ranked.pop(0))
            if ranked and len(picked) < per_step:
                picked.append(ranked.pop())
        out.append((step, [s for _, s in sorted(picked, key=lambda p: p[0])]))
    return out


def _total(sample: dict) -> float:
    rewards = sample.get("rewards") or {}
    total = rewards.get("total") if isinstance(rewards, dict) else None
    return float(total) if isinstance(total, (int, float)) else 0.0


def _is_correct(sample: dict) -> bool | None:
    rewards = sample.get("rewards") if isinstance(sample.get("rewards"), dict) else {}
    if isinstance(rewards.get("accuracy"), (int, float)):
        return rewards["accuracy"] > 0
    if sample.get("answer") is not None and sample.get("ground_truth") is not None:
        return str(sample["answer"]).strip() == str(sample["ground_truth"]).strip()
    return None


def render_sample(sample: dict) -> str:
    """One sample card: verdict badge, extracted answer vs ground truth, rewards, prompt, the
    reasoning and the answer part on different backgrounds."""
    correct = _is_correct(sample)
    badge = "" if correct is None else (
        '<span class="badge ok">correct</span>' if correct else '<span class="badge no">wrong</span>'
    )
    answer = sample.get("answer")
    answer_html = f"<code>{esc(answer)}</code>" if answer is not None else "<i>none extracted</i>"
    rewards = sample.get("rewards") if isinstance(sample.get("rewards"), dict) else {}
    chips = "".join(
        f'<span class="chip">{esc(k)} {v:.2f}</span>' if isinstance(v, (int, float))
        else f'<span class="chip">{esc(k)} {esc(v)}</span>'
        for k, v in rewards.items()
    )
    if isinstance(sample.get("conversation"), list):
        parts = render_conversation(sample["conversation"])
        chips += "".join(f'<span class="chip">{esc(k.replace("_", " "))} {esc(sample[k])}</span>'
                         for k in ("tool_calls", "tool_errors", "limit") if sample.get(k) not in (None, 0))
    else:
        parts = _completion_parts(str(sample.get("completion", "")))
    prompt = sample.get("prompt")
    prompt_html = ""
    if prompt:
        # the question sits at the end of a templated chat prompt: preview its last words
        preview = " ".join(str(prompt).split())
        preview = preview if len(preview) <= 110 else "…" + preview[-110:]
        prompt_html = (f'<details class="prompt"><summary>prompt <span class="preview">{esc(preview)}</span>'
                       f"</summary>{_text_block(str(prompt))}</details>")
    return (
        f'<div class="sample"><div class="meta">{badge}<span>extracted answer: {answer_html}</span>'
        f"<span>ground truth: <code>{esc(sample.get('ground_truth', '–'))}</code></span>"
        f"<span>{chips}</span></div>{prompt_html}{parts}</div>"
    )


def _completion_parts(text: str) -> str:
    """A completion's reasoning and answer part, on different backgrounds."""
    think, answer_part = split_completion(text)
    parts = ""
    if think.strip() or not answer_part:
        parts += f'<div class="part think"><div class="label">reasoning</div>{_text_block(think)}</div>'
    if answer_part:
        parts += f'<div class="part answer"><div class="label">answer part</div>{_text_block(answer_part)}</div>'
    return parts


TOOL_CALL_SPAN = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)


def render_conversation(messages: list) -> str:
    """A multi-turn episode after its prompt: each assistant turn's text with its `<tool_call>` spans
    set apart, each tool result (errors marked) and user turn on its own background."""
    out = ""
    for m in messages:
        if not isinstance(m, dict):
            continue
        role, content = str(m.get("role", "")), str(m.get("content", ""))
        if role == "assistant":
            pos = 0
            for call in TOOL_CALL_SPAN.finditer(content):
                if content[pos:call.start()].strip():
                    out += _completion_parts(content[pos:call.start()])
                out += f'<div class="part toolcall"><div class="label">tool call</div>{_text_block(call.group())}</div>'
                pos = call.end()
            if content[pos:].strip() or pos == 0:
                out += _completion_parts(content[pos:])
        elif role == "tool":
            error = content.startswith("error:")
            name = f" — {m['name']}" if m.get("name") else ""
            out += (f'<div class="part toolresult{" error" if error else ""}"><div class="label">'
                    f'tool {"error" if error else "result"}{esc(name)}</div>{_text_block(content)}</div>')
        else:
            out += f'<div class="part userturn"><div class="label">{esc(role)}</div>{_text_block(content)}</div>'
    return out


# ----------------------------------------------------------------------------- sections


def _header(run: Run) -> str:
    model, task = run.model_task()
    title = " on ".join(x for x in (model, task) if x) or run.path.resolve().name
    facts = [("run", run.path.resolve().name)]
    if model:
        facts.append(("model", model))
    if task:
        facts.append(("task", task))
    wall = run.summary.get("wall_time_s")
    if isinstance(wall, (int, float)):
        facts.append(("wall time", str(dt.timedelta(seconds=round(wall)))))
    rss = run.summary.get("peak_rss_gb")
    if isinstance(rss, (int, float)):
        facts.append(("peak RAM", f"{rss:.1f} GB"))
    steps = [s.metrics[-1]["step"] for s in run.stages if s.metrics and isinstance(s.metrics[-1].get("step"), int)]
    if steps:
        facts.append(("steps", " + ".join(str(s) for s in steps)))
    if control_of(run):
        facts.append(("control run", CONTROL_NAMES.get(control_of(run), control_of(run))))
    items = "".join(f"<li><b>{esc(k)}</b>{esc(v)}</li>" for k, v in facts)
    return f'<h1>rlvr report: {esc(title)}</h1><ul class="facts">{items}</ul>'


def _verdict_box(result: Verdict) -> str:
    notes = "".join(f"<p>{esc(n)}</p>" for n in result.notes)
    return f'<section class="verdict {esc(result.kind)}"><p class="main">{esc(result.text)}</p>{notes}</section>'


def _alarms(run: Run) -> str:
    found = alarms(run)
    if not found:
        return ""
    items = "".join(
        f"<li><b>{esc(a['name'])}</b>{' (' + esc(a['stage']) + ')' if a['stage'] else ''}: {esc(a['message'])} "
        + (f"— at step {esc(a['first_step'])}" if a["count"] == 1 else
           f"— {a['count']} steps between {esc(a['first_step'])} and {esc(a['last_step'])}")
        + "</li>"
        for a in found
    )
    return f'<section class="alarms"><h3>Alarms raised during training</h3><ul>{items}</ul></section>'


COLUMNS = (("accuracy", "accuracy"), ("delta", "Δ vs first (points)"), ("format_rate", "format rate"),
           ("mean_length", "mean length (tokens)"), ("majority_baseline", "majority baseline"),
           ("chance_baseline", "chance"), ("n", "n"))


def _cell(row: dict, key: str, base: object) -> str:
    """One table cell; the accuracy delta is coloured by its sign."""
    value = row.get(key)
    if key == "delta":
        acc = row.get("accuracy")
        if not (isinstance(acc, (int, float)) and isinstance(base, (int, float))) or row.get("_first"):
            return "<td>–</td>"
        points = 100 * (acc - base)
        cls = "pos" if points > 0 else "neg" if points < 0 else ""
        return f"<td class='{cls}'>{points:+.1f}</td>"
    if key in ("accuracy", "format_rate", "majority_baseline", "chance_baseline"):
        return f"<td>{_pct(value)}</td>"
    if isinstance(value, float):
        return f"<td>{value:.0f}</td>"
    return f"<td>{esc(value) if value is not None else '–'}</td>"


def _before_after_table(rows: list[dict]) -> str:
    """stage | accuracy | delta vs the first row | format rate | mean length | n; empty columns dropped."""
    if not rows:
        return "<p>No evaluation recorded.</p>"
    rows = [{**row, "_first": i == 0} for i, row in enumerate(rows)]
    base = rows[0].get("accuracy")
    columns = [(k, t) for k, t in COLUMNS if any(r.get("accuracy" if k == "delta" else k) is not None for r in rows)]
    head = "<tr><th>stage</th>" + "".join(f"<th>{esc(t)}</th>" for _, t in columns) + "</tr>"
    body = "".join(
        f"<tr><td>{esc(row['label'])}</td>" + "".join(_cell(row, k, base) for k, _ in columns) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _plots(paths: list[Path]) -> str:
    if not paths:
        return "<p>No training metrics yet.</p>"
    out = ""
    for path in paths:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = CAPTIONS.get(path.stem, "")
        out += (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(path.stem)} plot">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")
    return out


def _samples(stage: Stage) -> str:
    out = ""
    for step, chosen in pick_samples(stage.samples):
        heading = f"<h3>Step {esc(step)}</h3>" if step is not None else ""
        out += heading + "".join(render_sample(s) for s in chosen)
    return out


def _configs(run: Run) -> str:
    """Each distinct config.yaml once, named by the stages that share it."""
    texts: dict[str, list[str]] = {}
    for stage in run.stages:
        if stage.config_text:
            texts.setdefault(stage.config_text, []).append(stage.name or "run")
    return "".join(
        f"<details><summary>config.yaml ({esc(', '.join(names))})</summary><pre>{esc(text)}</pre></details>"
        for text, names in texts.items()
    ) or "<p>No config.yaml found.</p>"


def _all_evals(run: Run) -> str:
    evals = run.evals
    if not evals:
        return ""
    rows = [{**r, "label": f"{r['_series']} @ step {r.get('step', '?')}"
             + (f" ({r['stage']})" if r.get("stage") not in (None, r["_series"]) else "")} for r in evals]
    return (f"<details><summary>All {len(rows)} evaluations</summary>{_before_after_table(rows)}"
            "</details>")


# ----------------------------------------------------------------------------- page


def _control_section(comparison: ControlComparison | None) -> str:
    """The run beside its control run: before, after, change of each, and the label."""
    if comparison is None:
        return ""
    kind = {"beyond-control": "improved", "matched-by-control": "flat", "no-gain": "flat"}.get(comparison.kind, "none")
    head = "<tr><th>run</th><th>before</th><th>after</th><th>change (points)</th></tr>"
    body = "".join(f"<tr><td>{esc(r['label'])}</td><td>{_pct(r['before'])}</td><td>{_pct(r['after'])}</td>"
                   f"<td class='{'pos' if r['change'] > 0 else 'neg' if r['change'] < 0 else ''}'>{r['change']:+.1f}</td></tr>"
                   for r in comparison.rows)
    notes = "".join(f"<p>{esc(n)}</p>" for n in comparison.notes)
    return (f"<h2>Beside its control run</h2><table>{head}{body}</table>"
            f'<section class="verdict {kind}"><p class="main">{esc(comparison.text)}</p>{notes}</section>')


SELF_COLUMNS = (("round", "round"), ("questions", "questions tried"), ("samples", "samples"),
                ("with_tool_call", "episodes calling a tool"), ("cut_by_limit", "episodes cut by a limit"),
                ("accepted", "accepted (verified + format)"), ("false_arithmetic", "of those, false arithmetic"),
                ("solved", "questions solved"), ("kept", "kept"),
                ("accuracy", "held-out accuracy after"), ("format_rate", "format rate after"))


def _self_rounds(run: Run) -> str:
    """The self warm-up's rounds (rlvr.selftrain), when the run had one."""
    rounds = self_rounds(run)
    if not rounds:
        return ""
    from rlvr.selftrain import round_column_shown

    cols = [(k, t) for k, t in SELF_COLUMNS if round_column_shown(rounds, k)]
    head = "<tr>" + "".join(f"<th>{esc(t)}</th>" for _, t in cols) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{_pct(r.get(k)) if k in ('accuracy', 'format_rate') else esc(r.get(k, '–'))}</td>"
                                    for k, _ in cols) + "</tr>" for r in rounds)
    return ("<h2>Self warm-up (no demonstrations)</h2><p class='sub'>Each round: few-shot sampling, the completions "
            f"the verifier accepts in the format kept, fine-tuned on.</p><table>{head}{body}</table>")


def _main_verdict(run: Run, rows: list[dict]) -> str:
    """The verdict box; a control run says so first."""
    result = verdict(rows)
    control = control_of(run)
    if control:
        result = Verdict(result.kind, f"Control run ({CONTROL_NAMES.get(control, control)}): {result.text}",
                         ["The reward was replaced: any change here is what training gives without the task's reward.",
                          *result.notes], result.delta_points)
    return _verdict_box(result)


def render_report(run: Run, plot_paths: list[Path], control: Run | None = None) -> str:
    """The whole page as a string; `control`: a control run to put beside it."""
    rows = before_after(run)
    comparison = (compare_to_control(rows, before_after(control), control_of(control) or "control")
                  if control is not None else None)
    script_hash = base64.b64encode(hashlib.sha256(CHECK_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    sample_html = "".join(
        (f"<h2>Sample completions{' — ' + esc(s.name) if s.name else ''}</h2>" + _samples(s))
        for s in run.stages if s.samples
    )
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlvr report: {esc(run.path.resolve().name)}</title>
<style>{CSS}</style>
<script>{CHECK_SCRIPT}</script>
</head><body><main>
{_header(run)}
{_main_verdict(run, rows)}
{_control_section(comparison)}
{_alarms(run)}
<h2>Before and after</h2>
{_before_after_table(rows)}
{_all_evals(run)}
{_self_rounds(run)}
<h2>Training curves</h2>
{_plots(plot_paths)}
{sample_html}
<h2>Configuration</h2>
{_configs(run)}
<footer>Generated by rlvr {esc(rlvr.__version__)} on {esc(generated)} from {esc(run.path.resolve())}.</footer>
</main></body></html>
"""


def write_report(run_dir: str | Path, control_dir: str | Path | None = None) -> Path:
    """Make the plots and write RUN/report.html; return its path. `control_dir`: a control run
    (`rlvr run --control ...`) whose gain is put beside this run's."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    control = load_run(control_dir) if control_dir is not None else None
    plot_paths = make_plots(run_dir, run)
    path = run_dir / REPORT_FILE
    path.write_text(render_report(run, plot_paths, control), encoding="utf-8")
    return path
