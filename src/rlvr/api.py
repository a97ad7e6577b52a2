"""rlvr in TRL's shape: `from rlvr import GRPOConfig, GRPOTrainer`.

    trainer = GRPOTrainer(model="path/or/hub-id", reward_funcs=[my_reward, "format"],
                          args=GRPOConfig(output_dir="runs/mine", max_steps=50), train_dataset=dataset)
    trainer.train()
    trainer.save_model("my-model")

`GRPOConfig` is one flat dataclass with TRL's option names and meanings (TRL's `GRPOConfig`, the
`TrainingArguments` it inherits and the LoRA options of TRL's `ModelConfig`), checked and complete when
constructed. `to_config` turns it into rlvr's own nested `rlvr.config.Config`; `GRPOTrainer.train` runs
`rlvr.trainer.train` on that config, the same function `rlvr train` runs: one training loop.

Where TRL's meaning and rlvr's own option differ, the TRL meaning is kept and converted:

- TRL's batch: `per_device_train_batch_size` completions per forward/backward on each device,
  `gradient_accumulation_steps` of them per optimizer step, `generation_batch_size` (or
  `steps_per_generation`) completions sampled at once. rlvr samples `grpo.prompts_per_step` prompts x
  `num_generations` completions per step and learns from them in `grpo.steps_per_generation` optimizer
  steps of `grpo.per_device_train_batch_size`-completion micro-batches. So prompts_per_step =
  generation_batch_size / num_generations, rlvr's steps_per_generation = TRL's steps_per_generation /
  gradient_accumulation_steps (optimizer steps per sampled batch), and the micro-batch is TRL's
  per_device_train_batch_size.
- TRL counts `max_steps`, `save_steps`, `eval_steps` in optimizer steps; rlvr in sampled batches
  (one GRPO step = steps_per_generation x num_iterations optimizer steps): they are divided, rounded up.
  `max_steps <= 0` trains `num_train_epochs` passes over the training prompts, as in TRL.

Where rlvr differs from TRL on purpose (docs/TRL_OPTIONS.md has every option, rlvr.trl_options the reasons): the defaults are rlvr's
(`GRPOConfig()` converts to `Config()`: a LoRA adapter, learning rate 1e-5, 128-token completions, loss
type grpo); a string in `reward_funcs` is a built-in reward or `file.py:function`, not a reward model;
without `eval_dataset` there is no held-out evaluation (an rlvr Task brings its own test examples).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from rlvr.config import TRL_NAMES, Config, ConfigError, apply_options
from rlvr.config_types import coerce

__all__ = ["GRPOConfig", "GRPOTrainer", "to_config"]


@dataclass
class GRPOConfig:
    """TRL's `GRPOConfig` options that mean something in rlvr, under TRL's names, with TRL's meanings."""

    # ---- run (TRL's TrainingArguments)
    output_dir: str = "runs/latest"
    """run directory: config, metrics, checkpoints, final model, report (an existing run is refused, not overwritten)"""
    seed: int = 0
    """seed for every random choice (data order, sampling, LoRA init)"""
    report_to: str | list[str] = "none"
    """extra trackers: wandb, trackio, mlflow, a list of them, or none (JSONL and TensorBoard are always written)"""
    logging_steps: float = 10
    """accepted for TRL scripts; rlvr logs every step's metrics"""
    disable_tqdm: bool | None = None
    """no progress bars or per-step lines"""
    save_steps: float = 10
    """write a checkpoint every N optimizer steps (rounded up to whole GRPO steps)"""
    save_total_limit: int | None = None
    """how many recent checkpoints to keep (None: 2)"""
    push_to_hub: bool = False
    """upload the final model to `hub_model_id` at the end of `train()` (`rlvr.export.push_to_hub`)"""
    hub_model_id: str | None = None
    """Hub repo (owner/name) of `push_to_hub`"""
    hub_private_repo: bool | None = None
    """create the Hub repo private"""
    hub_token: str | None = None
    """Hub token (else $HF_TOKEN or `hf auth login`'s); never saved with the run"""
    # ---- length of training
    max_steps: int = 20
    """optimizer steps to train; <= 0: num_train_epochs passes over the training prompts"""
    num_train_epochs: float = 3.0
    """passes over the training prompts when max_steps <= 0"""
    # ---- batch
    per_device_train_batch_size: int = 16
    """completions per forward/backward on each device (TRL's meaning; rlvr's micro-batch)"""
    gradient_accumulation_steps: int = 4
    """micro-batches per optimizer step"""
    generation_batch_size: int | None = None
    """completions sampled at once (a multiple of num_generations); None: per_device_train_batch_size x
    processes x steps_per_generation"""
    steps_per_generation: int | None = None
    """micro-batches each sampled batch is learned in (None: gradient_accumulation_steps); must be a multiple
    of gradient_accumulation_steps (rlvr takes whole optimizer steps per sampled batch)"""
    num_generations: int = 8
    """completions sampled per prompt (the group size G)"""
    # ---- optimizer
    learning_rate: float = 1e-5
    """AdamW peak learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    adam_beta1: float = 0.9
    """AdamW beta1"""
    adam_beta2: float = 0.99
    """AdamW beta2"""
    warmup_steps: float = 0
    """optimizer steps of linear warm-up; below 1, a fraction of all optimizer steps (transformers 5)"""
    warmup_ratio: float | None = None
    """fraction of optimizer steps with a linear warm-up (older transformers' name; wins over warmup_steps)"""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    """constant, linear or cosine decay after warm-up"""
    max_grad_norm: float = 1.0
    """gradient clipping (global L2 norm)"""
    gradient_checkpointing: bool = False
    """recompute layer activations in the backward pass: less memory, ~30% more time"""
    bf16: bool | None = None
    """train in bfloat16 (None or False: rlvr's auto, fp32 on a CPU, bf16 on a GPU that supports it)"""
    fp16: bool = False
    """train in float16"""
    # ---- sampling
    max_completion_length: int = 128
    """most tokens generated per completion"""
    temperature: float = 1.0
    """sampling temperature (the update's log-probs use the same)"""
    top_p: float = 1.0
    """nucleus sampling"""
    top_k: int = 0
    """top-k sampling (0: off)"""
    use_vllm: bool = False
    """generate with vLLM (scripts/setup_vllm.sh)"""
    vllm_mode: Literal["colocate"] = "colocate"
    """the engine runs in the training process; TRL's server mode is not built"""
    vllm_enable_sleep_mode: bool = False
    """CUDA: the engine sleeps while the policy updates"""
    vllm_gpu_memory_utilization: float = 0.3
    """fraction of the GPU's memory vLLM may take"""
    vllm_max_model_length: int | None = None
    """the engine's context length (None: longest prompt + max_completion_length)"""
    # ---- loss
    beta: float = 0.0
    """KL coefficient to the reference model (0: no KL term)"""
    num_iterations: int = 1
    """passes over each sampled batch (PPO epochs)"""
    epsilon: float = 0.2
    """PPO ratio clip, lower (and upper unless epsilon_high)"""
    epsilon_high: float | None = None
    """upper clip (DAPO's clip-higher); None: epsilon"""
    delta: float | None = None
    """two-sided clip of negative-advantage ratios (INTELLECT-2); None: off"""
    sapo_temperature_neg: float = 1.05
    """loss_type sapo: gate temperature for non-positive advantages"""
    sapo_temperature_pos: float = 1.0
    """loss_type sapo: gate temperature for positive advantages"""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """token (GRPO) or sequence (GSPO) importance ratio"""
    loss_type: str = "grpo"
    """grpo, dr_grpo, dapo, bnpo, cispo, sapo (rlvr.algorithms.losses)"""
    scale_rewards: bool | str = "group"
    """group, batch or none (True: group, False: none)"""
    mask_truncated_completions: bool = False
    """exclude completions cut at max_completion_length from the loss"""
    reward_weights: list[float] | None = None
    """one weight per reward function (None: 1 each)"""
    multi_objective_aggregation: Literal["sum_then_normalize"] = "sum_then_normalize"
    """weighted sum of the rewards, then the group normalisation (the only mode rlvr has)"""
    vllm_importance_sampling_correction: bool = True
    """with vLLM: reweight by the trainer/sampler probability ratio"""
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "sequence_mask"
    """granularity and constraint of the correction"""
    vllm_importance_sampling_clip_max: float = 3.0
    """upper bound of the importance weight"""
    vllm_importance_sampling_cap: float | None = None
    """TRL's deprecated name of vllm_importance_sampling_clip_max (overrides it when set)"""
    # ---- evaluation (needs an eval_dataset, or an rlvr Task)
    eval_strategy: Literal["no", "steps"] = "no"
    """steps: also evaluate every eval_steps optimizer steps (rlvr evaluates before and after training anyway)"""
    eval_steps: float | None = None
    """optimizer steps between evaluations with eval_strategy steps (None: logging_steps)"""
    per_device_eval_batch_size: int = 64
    """prompts per generation batch in evaluation"""
    # ---- LoRA (TRL's ModelConfig names; peft_config= overrides them)
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
    # ---- rlvr's own
    prompt_column: str = "prompt"
    """the dataset column holding the prompt (text or a list of messages)"""
    answer_column: str | None = None
    """the column holding the reference answer, for the built-in accuracy reward and evaluation"""
    system_prompt: str | None = None
    """override the task's system prompt"""
    prefill: str = ""
    """text that starts the assistant's turn, e.g. "<think>\""""
    rlvr_options: dict[str, Any] = field(default_factory=dict)
    """any other rlvr option by its dotted name, e.g. {"eval.n": 50, "run.doctor": "off"} (`rlvr config` lists them)"""
    # ---- derived in __post_init__
    prompts_per_step: int = field(init=False, default=0)
    """prompts sampled per GRPO step: generation_batch_size / num_generations"""
    optimizer_steps_per_generation: int = field(init=False, default=0)
    """optimizer steps per sampled batch per pass: steps_per_generation / gradient_accumulation_steps"""

    def __post_init__(self):
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.init:
                setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], f"GRPOConfig.{f.name}"))
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [n.strip() for n in self.report_to.split(",")]
        if "all" in self.report_to:
            raise ConfigError("GRPOConfig.report_to: 'all' is not taken by rlvr; name the trackers (wandb, trackio, mlflow)")
        if self.vllm_importance_sampling_cap is not None:
            self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap
        _derive_batch(self, int(os.environ.get("WORLD_SIZE", "1")))
        to_config(self, train_size=1)  # every value checked now, as rlvr checks a YAML file


def _derive_batch(args: GRPOConfig, world: int) -> None:
    """TRL's generation batch (GRPOConfig.__post_init__), then rlvr's prompts per step and optimizer steps."""
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations"):
        if getattr(args, name) < 1:
            raise ConfigError(f"GRPOConfig.{name} must be >= 1, got {getattr(args, name)}")
    global_batch = args.per_device_train_batch_size * world
    if args.generation_batch_size is not None and args.steps_per_generation is not None:
        raise ConfigError("GRPOConfig: generation_batch_size and steps_per_generation cannot both be set (as in TRL)")
    if args.generation_batch_size is None:
        args.steps_per_generation = args.steps_per_generation or args.gradient_accumulation_steps
        args.generation_batch_size = global_batch * args.steps_per_generation
    elif args.generation_batch_size % global_batch:
        raise ConfigError(f"GRPOConfig.generation_batch_size ({args.generation_batch_size}) must be divisible by "
                          f"per_device_train_batch_size x processes ({global_batch})")
    else:
        args.steps_per_generation = args.generation_batch_size // global_batch
    if args.generation_batch_size % args.num_generations:
        raise ConfigError(f"GRPOConfig.generation_batch_size ({args.generation_batch_size}) must be divisible by "
                          f"num_generations ({args.num_generations}): whole groups are sampled")
    if args.steps_per_generation % args.gradient_accumulation_steps:
        raise ConfigError(f"GRPOConfig.steps_per_generation ({args.steps_per_generation}) must be a multiple of "
                          f"gradient_accumulation_steps ({args.gradient_accumulation_steps}): rlvr learns from each "
                          "sampled batch in whole optimizer steps")
    args.prompts_per_step = args.generation_batch_size // args.num_generations
    args.optimizer_steps_per_generation = args.steps_per_generation // args.gradient_accumulation_steps


RLVR_NAMES = {"prompt_column": None, "answer_column": None, "system_prompt": "task.system_prompt",
               "prefill": "task.prefill"}
"""rlvr's own flat options -> their place in Config (None: the trainer uses them)"""


def to_config(args: GRPOConfig, *, train_size: int | None = None) -> Config:
    """rlvr's `Config` for `args`, finalized. `train_size` (training prompts) is needed when
    max_steps <= 0 (num_train_epochs counts passes over them)."""
    cfg = Config()
    options: dict[str, Any] = {key: getattr(args, name) for name, key in TRL_NAMES.items()
                               if name in _FIELDS and name != "vllm_importance_sampling_cap"}
    options.update({key: getattr(args, name) for name, key in RLVR_NAMES.items() if key})
    per_step = args.optimizer_steps_per_generation * args.num_iterations  # optimizer steps per GRPO step
    if args.max_steps > 0:
        max_steps = math.ceil(args.max_steps / per_step)
    elif train_size is None:
        raise ConfigError("GRPOConfig.max_steps <= 0 trains num_train_epochs passes: the training set's size is needed")
    else:
        max_steps = max(1, math.ceil(args.num_train_epochs * train_size / args.prompts_per_step))
    options.update({
        "grpo.max_steps": max_steps, "grpo.prompts_per_step": args.prompts_per_step,
        "grpo.steps_per_generation": args.optimizer_steps_per_generation,
        "grpo.per_device_train_batch_size": args.per_device_train_batch_size,
        "grpo.warmup_ratio": _warmup_ratio(args, max_steps * per_step),
        "run.save_steps": math.ceil(args.save_steps / per_step) if args.save_steps > 0 else 0,
        "run.keep_checkpoints": args.save_total_limit or cfg.run.keep_checkpoints,
        "run.quiet": bool(args.disable_tqdm),
        "model.dtype": "bf16" if args.bf16 else "fp16" if args.fp16 else cfg.model.dtype,
        "eval.batch_size": args.per_device_eval_batch_size,
        "eval.every": _eval_every(args, per_step),
    })
    return apply_trl_options(cfg, options, args)


def apply_trl_options(cfg: Config, options: dict, args) -> Config:
    """`cfg` with the options converted from a TRL-shaped config, then its `rlvr_options`, finalized;
    an error names the config class (GRPOConfig, SFTConfig)."""
    try:
        apply_options(cfg, options)
        apply_options(cfg, args.rlvr_options)
        return cfg.finalize()
    except ConfigError as err:
        raise ConfigError(f"{type(args).__name__}: {err}") from None


def _warmup_ratio(args: GRPOConfig, optimizer_steps: int) -> float:
    """grpo.warmup_ratio for warmup_ratio, else warmup_steps (a count, or a fraction below 1)."""
    if args.warmup_ratio is not None:
        return args.warmup_ratio
    if args.warmup_steps < 0:
        raise ConfigError(f"GRPOConfig.warmup_steps must be >= 0, got {args.warmup_steps}")
    return args.warmup_steps if args.warmup_steps < 1 else min(1.0, args.warmup_steps / max(1, optimizer_steps))


def _eval_every(args: GRPOConfig, per_step: int) -> int:
    """eval.every (GRPO steps) for TRL's eval_strategy / eval_steps (optimizer steps)."""
    if args.eval_strategy == "no":
        return 0
    steps = args.eval_steps if args.eval_steps is not None else args.logging_steps
    if steps <= 0:
        raise ConfigError("GRPOConfig.eval_steps must be > 0 with eval_strategy 'steps'")
    return math.ceil(steps / per_step)


_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}


# ------------------------------------------------------------------------------------- the trainer

class RunTrainer:
    """What rlvr's TRL-shaped trainers share: the model and tokenizer they hand to rlvr, the run
    directory, `save_model` and `push_to_hub`. A subclass sets `args`, `config`, `model` and
    `processing_class` in its `__init__`."""

    args: Any
    config: Config

    def _model_and_tokenizer(self):
        """(model, tokenizer) for `rlvr.trainer.train`: (None, None) lets it load a model spec itself."""
        from rlvr.models import load_model, load_tokenizer

        if isinstance(self.model, str):
            if self.processing_class is None:
                return None, None
            model, _ = load_model(self.model, device=self.config.model.device, dtype=self.config.model.dtype)
            return model, _with_pad_token(self.processing_class)
        tokenizer = self.processing_class
        if tokenizer is None:
            name = getattr(self.model, "name_or_path", None)
            if not name:
                raise ConfigError(f"{type(self).__name__}: a loaded model needs processing_class= (its tokenizer)")
            tokenizer = load_tokenizer(str(name))
        return self.model, _with_pad_token(tokenizer)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run.output_dir)

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """The trained model as a full Hugging Face model (LoRA merged) in `output_dir`; None: the run's
        own `final/merged`, already written by `train()`. Returns the directory."""
        final = self.run_dir / "final" / "merged"
        if not (final / "config.json").exists():
            raise ConfigError(f"save_model: {final} does not exist; call train() first")
        if output_dir is None:
            return final
        out = Path(output_dir)
        if out.resolve() != final.resolve():
            shutil.copytree(final, out, dirs_exist_ok=True)
        return out

    def push_to_hub(self, repo_id: str | None = None, *, token: str | None = None, private: bool | None = None,
                    what: str = "merged") -> str:
        """Upload the final model (`rlvr.export.push_to_hub`) to repo_id (default args.hub_model_id)."""
        from rlvr.export import push_to_hub

        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ConfigError(f"push_to_hub: give repo_id or set {type(self.args).__name__}.hub_model_id (owner/name)")
        private = self.args.hub_private_repo if private is None else private
        return push_to_hub(self.run_dir, repo_id, token=token or self.args.hub_token, private=bool(private), what=what)


class GRPOTrainer(RunTrainer):
    """TRL's `GRPOTrainer` on rlvr's loop (`rlvr.trainer.train`).

    model: a model spec (Hub id, local directory, `smollm2-135m`, a run directory) or a loaded
    `transformers` model (then `processing_class`, its tokenizer, is needed unless it can be loaded
    from `model.name_or_path`). reward_funcs: a callable with TRL's signature `fn(completions, **kwargs)`,
    a built-in reward name (accuracy, format, format_strict, length), `file.py:function`, or a list of
    them, weighted by `args.reward_weights`. train_dataset / eval_dataset: a `datasets.Dataset`, a list
    of dicts (a `prompt` column; every column reaches the rewards), an rlvr `Task` or a task spec such as
    `gsm8k`. peft_config: a `peft.LoraConfig` (its r, alpha, dropout and target modules).
    """

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        self.args = args if args is not None else GRPOConfig()
        if not isinstance(self.args, GRPOConfig):
            raise TypeError(f"GRPOTrainer: args must be rlvr.GRPOConfig, not {type(self.args).__name__}")
        self.model, self.processing_class = model, processing_class
        self.task = as_task(train_dataset, eval_dataset, prompt_column=self.args.prompt_column,
                            answer_column=self.args.answer_column)
        rewards, self.reward_funcs = reward_specs(reward_funcs, self.args.reward_weights)
        self.config = to_config(self.args, train_size=len(self.task.train_examples()) if self.args.max_steps <= 0 else None)
        self.config.task.rewards = rewards
        self.config.task.name = str(getattr(self.task, "name", None) or "dataset")
        if isinstance(model, str):
            self.config.model.name = model
        else:
            self.config.model.name = str(getattr(model, "name_or_path", "") or "model")
        if peft_config is not None:
            _apply_peft(self.config, peft_config)
        self.config.finalize()
        self.result = None

    def train(self, resume_from_checkpoint: bool | str | None = None):
        """Train (`rlvr.trainer.train`); returns its `TrainResult` (run_dir, steps, the evaluation rows).
        resume_from_checkpoint: True (or this run's directory) continues the run in args.output_dir."""
        from rlvr.trainer import train

        resume = bool(resume_from_checkpoint)
        if isinstance(resume_from_checkpoint, str) and not _inside(resume_from_checkpoint, self.config.run.output_dir):
            raise ConfigError(f"resume_from_checkpoint '{resume_from_checkpoint}' is not in args.output_dir "
                              f"'{self.config.run.output_dir}': rlvr resumes the run of its output_dir")
        model, tokenizer = self._model_and_tokenizer()
        self.result = train(self.config, resume=resume, model=model, tokenizer=tokenizer, task=self.task,
                            reward_funcs=self.reward_funcs)
        if self.result.model is not None:  # as TRL: trainer.model is the trained model afterwards
            self.model = self.result.model
        if self.args.push_to_hub:
            self.push_to_hub()
        return self.result

def _with_pad_token(tokenizer):
    """rlvr pads batches: a tokenizer without a pad token pads with its end-of-sequence token."""
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _inside(path: str, run_dir: str) -> bool:
    here, root = Path(path).resolve(), Path(run_dir).resolve()
    return here == root or root in here.parents


def _is_task(data) -> bool:
    from rlvr.tasks.base import Task

    return isinstance(data, (Task, str))


def as_task(train, eval=None, *, prompt_column: str = "prompt", answer_column: str | None = None):
    """The rlvr Task for TRL's train_dataset / eval_dataset: a Task or a task spec as is, else
    `rlvr.tasks.dataset_task` over a `datasets.Dataset` or a list of dicts."""
    from rlvr.tasks import get_task
    from rlvr.tasks.base import Task

    if train is None:
        raise ConfigError("GRPOTrainer: train_dataset is required (a datasets.Dataset, a list of dicts or an rlvr Task)")
    if _is_task(train):
        if eval is not None:
            raise ConfigError("GRPOTrainer: with an rlvr Task as train_dataset, the task's own test examples are "
                              "the evaluation set: leave eval_dataset out")
        return train if isinstance(train, Task) else get_task(train)
    from rlvr.tasks import dataset_task

    if eval is None and not isinstance(train, Mapping):  # as TRL: every row trains, no held-out split
        eval = []
    return dataset_task(train, eval, prompt_column=prompt_column, answer_column=answer_column)


def reward_specs(reward_funcs, weights: Sequence[float] | None) -> tuple[dict[str, float], dict[str, Callable]]:
    """TRL's reward_funcs (+ reward_weights) as rlvr's task.rewards {name: weight} and the callables by name."""
    items = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if not items:
        raise ConfigError("GRPOTrainer: reward_funcs is empty; give at least one reward function")
    if weights is not None and len(weights) != len(items):
        raise ConfigError(f"GRPOConfig.reward_weights has {len(weights)} weights for {len(items)} reward functions")
    rewards: dict[str, float] = {}
    fns: dict[str, Callable] = {}
    for i, item in enumerate(items):
        weight = float(weights[i]) if weights is not None else 1.0
        if isinstance(item, str):
            name = item
        elif callable(item) and not _is_module(item):
            name = getattr(item, "__name__", None) or type(item).__name__
            name = f"reward_{i}" if not name.isidentifier() else name
        else:
            raise ConfigError(f"GRPOTrainer: reward_funcs[{i}] is a {type(item).__name__}; rlvr takes functions "
                              "fn(completions, **kwargs), built-in names or file.py:function (no reward models)")
        base, n = name, 2
        while name in rewards:
            name, n = f"{base}_{n}", n + 1
        rewards[name] = weight
        if not isinstance(item, str):
            fns[name] = item
    return rewards, fns


def _is_module(obj) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, torch.nn.Module)


def _apply_peft(cfg: Config, peft_config) -> None:
    """A `peft.LoraConfig`'s rank, alpha, dropout and target modules as rlvr's model.lora_* options."""
    if type(peft_config).__name__ != "LoraConfig":
        raise ConfigError(f"GRPOTrainer: peft_config must be a peft.LoraConfig, not {type(peft_config).__name__}")
    m = cfg.model
    m.use_peft, m.lora_r, m.lora_alpha = True, int(peft_config.r), int(peft_config.lora_alpha)
    m.lora_dropout = float(peft_config.lora_dropout)
    targets = peft_config.target_modules
    m.lora_target_modules = sorted(targets) if isinstance(targets, (set, list, tuple)) else (targets or "all-linear")
