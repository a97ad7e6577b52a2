"""What rlvr does with each of TRL's GRPOConfig options: the reasons behind docs/TRL_OPTIONS.md.

`rlvr.api.GRPOConfig` holds the options rlvr takes; here are how the ones without a one-to-one rlvr
option are converted (CONVERTED), why a default differs from TRL's (DIFFERENT_DEFAULTS), which are
accepted with no effect (NO_EFFECT) and why the others are not taken (NOT_APPLICABLE).
`scripts/trl_options.py` writes the table from these; tests/test_trl_options.py checks that every
TRL option (docs/trl_grpo_options.json) is classified.
"""

from __future__ import annotations

from rlvr.api import RLVR_NAMES
from rlvr.config import TRL_NAMES

CONVERTED: dict[str, str] = {
    "per_device_train_batch_size": "grpo.per_device_train_batch_size (the micro-batch); sizes the sampled batch with gradient_accumulation_steps",
    "gradient_accumulation_steps": "grpo.steps_per_generation = steps_per_generation / gradient_accumulation_steps",
    "generation_batch_size": "grpo.prompts_per_step = generation_batch_size / num_generations",
    "steps_per_generation": "grpo.steps_per_generation = steps_per_generation / gradient_accumulation_steps",
    "max_steps": "grpo.max_steps = max_steps / optimizer steps per GRPO step, rounded up",
    "num_train_epochs": "grpo.max_steps = epochs x training prompts / prompts per step (when max_steps <= 0)",
    "save_steps": "run.save_steps, in GRPO steps (rounded up)",
    "save_total_limit": "run.keep_checkpoints",
    "warmup_ratio": "grpo.warmup_ratio (None: from warmup_steps)",
    "warmup_steps": "grpo.warmup_ratio = warmup_steps / optimizer steps (below 1: the ratio itself)",
    "disable_tqdm": "run.quiet",
    "bf16": "model.dtype bf16", "fp16": "model.dtype fp16",
    "eval_strategy": "eval.every (no: 0)", "eval_steps": "eval.every, in GRPO steps (rounded up)",
    "per_device_eval_batch_size": "eval.batch_size",
    "report_to": "run.report_to (none: [])",
    "scale_rewards": "grpo.scale_rewards (True: group, False: none)",
    "reward_weights": "task.rewards: {reward name: weight}",
    "multi_objective_aggregation": "rlvr's scoring: weighted sum, then group normalisation",
    "vllm_importance_sampling_cap": "grpo.vllm_importance_sampling_clip_max (TRL's deprecated name)",
    "push_to_hub": "GRPOTrainer.push_to_hub at the end of train()", "hub_model_id": "GRPOTrainer.push_to_hub",
    "hub_private_repo": "GRPOTrainer.push_to_hub", "hub_token": "GRPOTrainer.push_to_hub (never saved)",
    "logging_steps": "-", "prompt_column": "rlvr.tasks.dataset_task", "answer_column": "rlvr.tasks.dataset_task",
    "rlvr_options": "any Config option by dotted name",
}
"""how the options with no one-to-one rlvr option are converted (to_config, GRPOTrainer)"""


def destination(name: str) -> str:
    """Where rlvr.GRPOConfig's option `name` goes in rlvr (for docs/TRL_OPTIONS.md)."""
    if name in CONVERTED:
        return CONVERTED[name]
    key = TRL_NAMES.get(name) or RLVR_NAMES.get(name)
    if key is None:
        raise KeyError(f"rlvr.GRPOConfig.{name} has no destination: add it to TRL_NAMES, RLVR_NAMES or CONVERTED")
    return key


NOT_APPLICABLE: dict[str, str] = {
    "model_init_kwargs": "rlvr loads the model from its spec (dtype, device, 4-bit: rlvr_options model.*); pass a loaded model for anything else",
    "trust_remote_code": "nothing rlvr loads may run code from a model repository; pass a loaded model instead",
    "router_aux_loss_coef": "mixture-of-experts router loss: not built (rlvr trains dense models)",
    "disable_dropout": "not built: the models rlvr trains have no dropout by default; LoRA's is lora_dropout (0)",
    "cast_lm_head_to_fp32": "not built: rlvr computes log-probs in fp32 from the logits (rlvr.policy)",
    "remove_unused_columns": "rlvr always passes every dataset column to the rewards (TRL's default False)",
    "num_generations_eval": "rlvr's evaluation is greedy, or eval.samples completions per example (rlvr_options)",
    "ds3_gather_for_generation": "DeepSpeed is not used; under FSDP rlvr gathers the weights for the sampler itself",
    "shuffle_dataset": "rlvr always shuffles the training prompts with the run's seed, epoch by epoch",
    "pad_to_multiple_of": "not built: rlvr pads each micro-batch to its longest row",
    "min_p": "not built in rlvr's samplers (temperature, top_p, top_k are)",
    "generation_kwargs": "not built: the samplers take temperature, top_p, top_k and max_completion_length",
    "chat_template_kwargs": "not built: the chat template is applied with its defaults (rlvr_options task.chat)",
    "repetition_penalty": "not built in rlvr's samplers",
    "cache_implementation": "rlvr's fast sampler has its own KV cache",
    "vllm_model_impl": "not built: vLLM runs its own implementation",
    "vllm_structured_outputs_regex": "not built",
    "vllm_server_base_url": "vLLM server mode is not built (colocate only)",
    "vllm_server_host": "vLLM server mode is not built (colocate only)",
    "vllm_server_port": "vLLM server mode is not built (colocate only)",
    "vllm_server_timeout": "vLLM server mode is not built (colocate only)",
    "vllm_group_port": "vLLM server mode is not built (colocate only)",
    "vllm_tensor_parallel_size": "not built: one vLLM engine per process",
    "vespo_k_pos": "loss type vespo is not built (rlvr.algorithms.losses.LossType)",
    "vespo_lambda_pos": "loss type vespo is not built (rlvr.algorithms.losses.LossType)",
    "vespo_k_neg": "loss type vespo is not built (rlvr.algorithms.losses.LossType)",
    "vespo_lambda_neg": "loss type vespo is not built (rlvr.algorithms.losses.LossType)",
    "sync_ref_model": "not built: the KL reference is the base model (the adapter disabled)",
    "ref_model_mixup_alpha": "not built (sync_ref_model)",
    "ref_model_sync_steps": "not built (sync_ref_model)",
    "top_entropy_quantile": "not built",
    "entropy_coef": "not built (rlvr logs the entropy, it does not add it to the loss)",
    "use_adaptive_entropy": "not built (entropy_coef)",
    "entropy_coef_min": "not built (entropy_coef)",
    "entropy_coef_max": "not built (entropy_coef)",
    "entropy_coef_delta": "not built (entropy_coef)",
    "entropy_target": "not built (entropy_coef)",
    "max_tool_calling_iterations": "tool calling is not built (rlvr.environments.SingleTurn)",
    "vllm_importance_sampling_clip_min": "not built: rlvr's correction has an upper bound only",
    "off_policy_mask_threshold": "not built",
    "use_bias_correction_kl": "not built",
    "log_completions": "always on: rlvr writes sample completions to samples.jsonl (and the trackers) every run.log_samples_every steps",
    "log_multimodal": "rlvr trains text models",
    "num_completions_to_print": "rlvr prints none; samples.jsonl and the report hold them",
    "log_unique_prompts": "not built",
    "log_completions_hub_repo": "not built",
    "use_transformers_continuous_batching": "rlvr's own sampler (sampling.backend fast) batches without padding",
    "transformers_continuous_batching_config": "not built (use_transformers_continuous_batching)",
    "use_transformers_paged": "deprecated in TRL; not built (use_transformers_continuous_batching)",
}
"""TRL GRPOConfig options rlvr does not take, and why"""

DIFFERENT_DEFAULTS: dict[str, str] = {
    "output_dir": "rlvr's run directory (the CLI's default); an existing run is refused, not overwritten",
    "seed": "the seed of rlvr's recorded runs and golden tests",
    "save_steps": "checkpoints are cheap with LoRA, and a CPU run is short",
    "max_steps": "a CPU run is measured in steps; -1 trains num_train_epochs as in TRL",
    "per_device_train_batch_size": "with gradient_accumulation_steps 4: 8 prompts x 8 completions per step (TRL's defaults sample 1 prompt per step)",
    "gradient_accumulation_steps": "see per_device_train_batch_size",
    "learning_rate": "a LoRA adapter (rlvr's default) wants ~10x the full fine-tuning rate",
    "adam_beta2": "rlvr's optimizer default, the one its recorded runs and golden losses use",
    "lr_scheduler_type": "rlvr's default, the one its recorded runs and golden losses use (TRL's decay: lr_scheduler_type='linear')",
    "gradient_checkpointing": "off: rlvr's fused layers already cut activation memory; recomputing costs ~30% time on a CPU",
    "max_completion_length": "small models on short reasoning tasks; 512 tokens x 64 completions is slow on a CPU",
    "loss_type": "rlvr keeps the paper's per-sequence mean (grpo), the loss of its recorded runs; dapo is one option away (TRL's luspo and vespo are not built)",
    "bf16": "TRL's None means bf16 unless fp16; rlvr's None is auto: fp32 on a CPU (bf16 matmuls are slow there), bf16 on a GPU that supports it",
    "use_peft": "a LoRA adapter trains in a fraction of the memory, which is what a CPU has (use_peft=False trains all weights)",
    "lora_dropout": "rlvr's default, no dropout (as in the base models); any value is accepted",
    "lora_target_modules": "every linear layer (TRL's None is peft's per-architecture default, q_proj and v_proj for Llama)",
    "per_device_eval_batch_size": "prompts per generation batch: rlvr's sampler batches 64 prompts at once",
}
"""TRL options rlvr takes under TRL's name and meaning, with another default, and why"""

NO_EFFECT: dict[str, str] = {
    "logging_steps": "rlvr writes every step's metrics (metrics.jsonl, TensorBoard, the trackers)",
}
"""TRL options accepted so that TRL scripts run, with no effect in rlvr"""
