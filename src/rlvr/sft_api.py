"""rlvr's SFT warm-up in TRL's shape: `from rlvr import SFTConfig, SFTTrainer`.

    trainer = SFTTrainer(model="smollm2-135m", args=SFTConfig(output_dir="runs/sft"), train_dataset=dataset)
    trainer.train()
    trainer.save_model("my-sft-model")

The dataset is TRL's prompt-completion format (`prompt` and `completion` columns, text or messages)
or its conversational format (a `messages` column: the last assistant turn is the completion).
`SFTTrainer.train` writes the rows to RUN/sft_data.jsonl and runs `rlvr.sft.run_sft` on it, the
function `rlvr sft` runs. Departures from TRL, on purpose: the loss is on completion tokens only
(TRL's default for prompt-completion data; a `text` column for language modelling is not taken);
rlvr's prompt format wraps a plain-text prompt (system prompt, chat template); `max_steps` is not
built (epochs are); the learning rate decays on a cosine after warm-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from rlvr.api import RunTrainer, _apply_peft, apply_trl_options
from rlvr.config import Config, ConfigError
from rlvr.config_types import coerce

__all__ = ["SFTConfig", "SFTTrainer", "to_sft_config", "sft_rows"]


@dataclass
class SFTConfig:
    """TRL's `SFTConfig` options that mean something in rlvr's SFT, under TRL's names."""

    output_dir: str = "runs/sft"
    """run directory (an existing run is refused, not overwritten)"""
    seed: int = 0
    """seed of the data order and the LoRA init"""
    report_to: str | list[str] = "none"
    """extra trackers: wandb, trackio, mlflow, a list of them, or none"""
    disable_tqdm: bool | None = None
    """no progress bars"""
    learning_rate: float = 2e-4
    """AdamW peak learning rate (TRL: 2e-5; a LoRA adapter wants ~10x)"""
    num_train_epochs: int = 1
    """passes over the demonstrations (whole passes only)"""
    max_steps: int = -1
    """not built: -1 only (rlvr's SFT counts epochs)"""
    per_device_train_batch_size: int = 8
    """demonstrations per forward/backward"""
    gradient_accumulation_steps: int = 1
    """micro-batches per optimizer step"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    warmup_ratio: float = 0.05
    """fraction of steps with a linear warm-up, then cosine decay"""
    completion_only_loss: bool | None = None
    """None or True: the loss is on completion tokens only (rlvr's SFT has no other mode)"""
    use_peft: bool = True
    """train a LoRA adapter (True) or all weights (False)"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA scaling numerator"""
    lora_dropout: float = 0.0
    """dropout on the LoRA input"""
    lora_target_modules: str | list[str] = "all-linear"
    """modules that get an adapter"""
    hub_model_id: str | None = None
    """Hub repo (owner/name) of `push_to_hub`"""
    hub_private_repo: bool | None = None
    """create the Hub repo private"""
    hub_token: str | None = None
    """Hub token (else $HF_TOKEN or `hf auth login`'s); never saved with the run"""
    system_prompt: str | None = None
    """override the system prompt rlvr's prompt format adds to a plain-text prompt"""
    rlvr_options: dict[str, Any] = field(default_factory=dict)
    """any other rlvr option by its dotted name, e.g. {"model.dtype": "bf16"}"""

    def __post_init__(self):
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], f"SFTConfig.{f.name}"))
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [n.strip() for n in self.report_to.split(",")]
        if self.max_steps > 0:
            raise ConfigError("SFTConfig.max_steps is not built in rlvr's SFT: set num_train_epochs (max_steps=-1)")
        if self.completion_only_loss is False:
            raise ConfigError("SFTConfig.completion_only_loss=False is not built: rlvr's SFT learns completion tokens only")
        to_sft_config(self)  # every value checked now


def to_sft_config(args: SFTConfig) -> Config:
    """rlvr's `Config` for the SFT stage `args` describes, finalized."""
    cfg = Config()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    options = {
        "run.output_dir": args.output_dir, "run.seed": args.seed, "run.report_to": args.report_to,
        "run.quiet": bool(args.disable_tqdm), "sft.learning_rate": args.learning_rate,
        "sft.epochs": args.num_train_epochs, "sft.max_grad_norm": args.max_grad_norm,
        "sft.warmup_ratio": args.warmup_ratio, "sft.use_peft": args.use_peft,
        "sft.batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "grpo.per_device_train_batch_size": args.per_device_train_batch_size,
        "model.use_peft": args.use_peft, "model.lora_r": args.lora_r, "model.lora_alpha": args.lora_alpha,
        "model.lora_dropout": args.lora_dropout, "model.lora_target_modules": args.lora_target_modules,
        "task.system_prompt": args.system_prompt, "eval.n": 0,
    }
    return apply_trl_options(cfg, options, args)


def sft_rows(data, where: str = "train_dataset") -> list[dict]:
    """TRL's SFT rows as prompt-completion rows: `prompt` + `completion` as they are; `messages`
    split before the last assistant turn. Other columns are kept."""
    rows = [dict(r) for r in data]
    if not rows:
        raise ConfigError(f"SFTTrainer: {where} has no rows")
    out = []
    for i, row in enumerate(rows):
        if "prompt" in row and "completion" in row:
            out.append(row)
        elif "messages" in row:
            messages = list(row.pop("messages"))
            last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last is None or last == 0:
                raise ConfigError(f"SFTTrainer: {where} row {i}: 'messages' needs a user turn and an assistant turn")
            out.append({**row, "prompt": messages[:last], "completion": [messages[last]]})
        else:
            raise ConfigError(f"SFTTrainer: {where} row {i} has columns {', '.join(row)}; rlvr's SFT takes TRL's "
                              "prompt-completion (prompt, completion) or conversational (messages) format, not text")
    return out


class SFTTrainer(RunTrainer):
    """TRL's `SFTTrainer` on rlvr's SFT stage (`rlvr.sft.run_sft`).

    model: a model spec or a loaded model (with processing_class=, its tokenizer). train_dataset /
    eval_dataset: a `datasets.Dataset` or a list of dicts in TRL's prompt-completion or conversational
    format. peft_config: a `peft.LoraConfig`.
    """

    def __init__(self, model, args: SFTConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        from rlvr.tasks import dataset_task
        from rlvr.tasks.dataset import dataset_name

        self.args = args if args is not None else SFTConfig()
        if train_dataset is None:
            raise ConfigError("SFTTrainer: train_dataset is required")
        self.rows = sft_rows(train_dataset)
        evals = [] if eval_dataset is None else sft_rows(eval_dataset, "eval_dataset")
        self.task = dataset_task(self.rows, evals, name=dataset_name(train_dataset), answer_column=None)
        self.model, self.processing_class = model, processing_class
        self.config = to_sft_config(self.args)
        self.config.task.name = self.task.name
        self.config.model.name = model if isinstance(model, str) else str(getattr(model, "name_or_path", "") or "model")
        if evals:
            self.config.eval.n = len(evals)
        if peft_config is not None:
            _apply_peft(self.config, peft_config)
            self.config.sft.use_peft = True
        self.config.finalize()
        self.result = None

    def train(self):
        """Write the rows to RUN/sft_data.jsonl and fine-tune on them; returns `rlvr.sft.SFTResult`."""
        from rlvr.sft import run_sft

        run_dir = Path(self.config.run.output_dir)
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run: choose another output_dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        data = run_dir / "sft_data.jsonl"
        data.write_text("".join(json.dumps(r, default=str) + "\n" for r in self.rows))
        self.config.sft.source = str(data)
        model, tokenizer = self._model_and_tokenizer()
        self.result, _ = run_sft(self.config, model=model, tokenizer=tokenizer, task=self.task)
        return self.result
