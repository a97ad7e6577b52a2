"""Checked option values: types from the config dataclasses' annotations, a range for every number,
and a YAML loader that refuses alias bombs.

`rlvr.config` declares the options; this module says what a valid value is. A wrong value is an
error that names the option and what it takes (`grpo.epsilon_high: expected a number or null, got
'abc'`, `grpo.max_steps must be >= 1, got 0`), raised when the config is loaded, not steps later.
"""

from __future__ import annotations

import math
import re
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending option."""


# ----------------------------------------------------------------------------------------------
# Types: every field's annotation is checked when a value is set (YAML or command line)

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_ALIASES: dict[str, dict[Any, Any]] = {
    "run.doctor": {False: "off", True: "warn"},  # YAML reads a bare off / on as a boolean
    "grpo.scale_rewards": {True: "group", False: "none"},  # TRL's boolean form
    "task.chat": {"auto": None},
}


def type_name(annotation: Any) -> str:
    """How an option's type is named in errors: "a number or null", "one of text, json", ..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return ", ".join(names[:-1]).replace("true or false", "true, false") + " or " + names[-1]
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return f"a list of {type_name(args[0]).removeprefix('a ')}s" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping of names to numbers" if args and args[1] is float else "a mapping"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(annotation, str(annotation))


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/command-line value to the field's declared type, or fail naming the key and
    the type: `grpo.epsilon_high: expected a number or null, got 'abc'`."""
    aliases = _ALIASES.get(key, {})
    if isinstance(value, (bool, str)) and any(type(a) is type(value) and a == value for a in aliases):
        return aliases[value]
    args = get_args(annotation)
    if get_origin(annotation) is dict and isinstance(value, dict) and args and args[1] is not Any:
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    try:
        return _convert(value, annotation)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected {type_name(annotation)}, got {value!r}") from None


def _convert(value: Any, annotation: Any) -> Any:
    """`value` as `annotation` (bool, int, float, str, Literal, X | None, list[X], dict[str, X]);
    TypeError/ValueError when it is not one. Numbers must be finite; strings become numbers."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg)
            except (TypeError, ValueError, OverflowError):
                continue
        raise ValueError(value)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ValueError(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(value)
    if annotation in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(value)
        number = float(value) if not isinstance(value, int) else value
        if not math.isfinite(number):
            raise ValueError(value)
        if annotation is int:
            if number != int(number):
                raise ValueError(value)
            return int(number)
        return float(number)
    if annotation is str:
        if isinstance(value, (str, int, float)):  # a YAML number or true/false given as a name
            return str(value)
        raise TypeError(value)
    if origin is list or annotation is list:
        if value in ("", None):
            return []
        items = value if isinstance(value, list) else [value]
        return [_convert(v, args[0]) for v in items] if args else list(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise TypeError(value)
        if not args:
            return value
        return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------
# Ranges: every number has one, checked in `Config.finalize` (after the YAML and the overrides)

RANGES: dict[str, str] = {
    "model.lora_r": "[1, inf)", "model.lora_alpha": "[1, inf)", "model.lora_dropout": "[0, 1)",
    "task.reward_timeout": "(0, 86400]", "task.max_tool_calling_iterations": "[0, inf)",
    "task.max_tool_seconds": "(0, 86400]", "task.tool_timeout": "(0, 86400]",
    "sampling.temperature": "[0, 100]", "sampling.top_p": "(0, 1]", "sampling.top_k": "[0, inf)",
    "sampling.max_completion_length": "[1, inf)",
    "sampling.vllm_gpu_memory_utilization": "(0, 1]", "sampling.vllm_max_model_length": "[1, inf)",
    "sampling.vllm_kv_cache_memory_bytes": "[1, inf)", "grpo.vllm_importance_sampling_clip_max": "(0, inf)",
    "grpo.max_steps": "[1, inf)", "grpo.prompts_per_step": "[1, inf)", "grpo.num_generations": "[2, inf)",
    "grpo.num_iterations": "[1, inf)", "grpo.steps_per_generation": "[1, inf)",
    "grpo.per_device_train_batch_size": "[1, inf)", "grpo.learning_rate": "[0, 1]",
    "grpo.weight_decay": "[0, inf)", "grpo.adam_beta1": "[0, 1)", "grpo.adam_beta2": "[0, 1)",
    "grpo.warmup_ratio": "[0, 1]", "grpo.max_grad_norm": "(0, inf)", "grpo.epsilon": "[0, 1]",
    "grpo.epsilon_high": "[0, inf)", "grpo.delta": "(1, inf)", "grpo.sapo_temperature_pos": "(0, inf)",
    "grpo.sapo_temperature_neg": "(0, inf)", "grpo.beta": "[0, inf)", "grpo.max_resample_rounds": "[0, inf)",
    "grpo.logprob_chunk_size": "[1, inf)",
    "sft.num_examples": "[1, inf)", "sft.epochs": "[1, inf)", "sft.learning_rate": "[0, 1]",
    "sft.batch_size": "[1, inf)", "sft.warmup_ratio": "[0, 1]", "sft.max_grad_norm": "(0, inf)",
    "sft.self_rounds": "[1, inf)", "sft.self_questions": "[1, inf)", "sft.self_samples": "[1, inf)",
    "sft.self_shots": "[0, inf)", "sft.self_max_per_question": "[1, inf)", "sft.self_eval_n": "[0, inf)",
    "eval.n": "[0, inf)", "eval.every": "[0, inf)", "eval.samples": "[1, inf)", "eval.batch_size": "[1, inf)",
    "eval.max_new_tokens": "[1, inf)",
    "curriculum.target": "(0, 1)", "curriculum.band": "[0, 1)", "curriculum.window": "[1, inf)",
    "curriculum.min_level": "[0, inf)", "curriculum.max_level": "[0, inf)", "curriculum.start_level": "[0, inf)",
    "run.seed": "[0, 18446744073709551615]", "run.save_steps": "[0, inf)", "run.keep_checkpoints": "[1, inf)",
    "run.log_samples_every": "[0, inf)", "run.max_bad_steps": "[1, inf)", "run.threads": "[0, inf)",
    "run.alarm_every": "[0, inf)",
}
"""the allowed interval of every numeric option ("[a, b)": a <= x < b); `finalize` checks them all"""

_NOT_EMPTY = ("model.name", "model.device", "task.name", "sft.source", "sft.teacher_model", "sft.self_shot_source", "run.output_dir")
"""string options that must not be empty"""

MAX_REWARD_WEIGHT = 1e6
"""the largest |weight| of a reward: a weighted sum stays far inside float32 (~3.4e38)"""


def _describe_range(spec: str) -> str:
    """"[1, inf)" -> ">= 1"; "(0, 1]" -> "in (0, 1]"."""
    low, high = (b.strip() for b in spec[1:-1].split(","))
    if high == "inf":
        return f"{'>=' if spec[0] == '[' else '>'} {low}"
    return f"in {spec}"


def in_range(value: float, spec: str) -> bool:
    """Whether `value` lies in the interval `spec` ("[a, b]", "(a, b)", "[a, inf)", ...)."""
    low, high = (float(b) for b in spec[1:-1].split(","))
    above = value >= low if spec[0] == "[" else value > low
    below = value <= high if spec[-1] == "]" else value < high
    return above and below


def check_range(key: str, value: Any) -> None:
    """ConfigError naming `key` when `value` is outside its range in `RANGES` (None passes)."""
    if key in _NOT_EMPTY and not str(value).strip():
        raise ConfigError(f"{key} must not be empty")
    spec = RANGES.get(key)
    if spec is None or value is None:
        return
    if not in_range(value, spec):
        raise ConfigError(f"{key} must be {_describe_range(spec)}, got {value!r}")


def check_loss_type(name: str) -> None:
    """The loss types are the names `rlvr.algorithms.losses.LossType` has: a new one is accepted
    here as soon as the algorithms module has it."""
    from rlvr.algorithms.losses import LossType

    names = [t.value for t in LossType]
    if name not in names:
        raise ConfigError(f"grpo.loss_type '{name}' is not one of {', '.join(names)}")


def check_rewards(rewards: dict[str, float]) -> None:
    """task.rewards: at least one reward; each weight finite with |w| <= MAX_REWARD_WEIGHT, not all 0."""
    if not rewards:
        raise ConfigError("task.rewards is empty: give at least one reward, e.g. {accuracy: 1.0}")
    for name, weight in rewards.items():
        if not str(name).strip():
            raise ConfigError("task.rewards: a reward name is empty")
        if not (math.isfinite(weight) and abs(weight) <= MAX_REWARD_WEIGHT):
            raise ConfigError(f"task.rewards.{name}: the weight must be a finite number with "
                              f"|weight| <= {MAX_REWARD_WEIGHT:g}, got {weight!r}")
    if all(w == 0 for w in rewards.values()):
        raise ConfigError("task.rewards: every weight is 0, so there is nothing to learn")


def check_pattern(key: str, value: str, pattern: str, what: str) -> None:
    """ConfigError naming `key` when `value` does not match `pattern` (what it should look like: `what`)."""
    if not re.fullmatch(pattern, value):
        raise ConfigError(f"{key} must be {what}, got {value!r}")


DEVICE_PATTERN = r"auto|cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?"
"""model.device: what `torch.device` takes (and auto)"""

URL_PATTERN = r"https?://[^\s/]+(/\S*)?"
"""sft.teacher_base_url: an http(s) URL"""


def check_env_name(key: str, name: str) -> None:
    """An environment variable's name (not its value: a key pasted here would be saved with the run)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"{key} must be the NAME of an environment variable (letters, digits, _), such as "
                          "OPENAI_API_KEY; the value given is not shown, in case it is the key itself")


# ----------------------------------------------------------------------------------------------
# YAML without alias bombs

MAX_ALIAS_EXPANSION = 10_000
"""the most nodes that anchors and aliases may add to a YAML document once expanded (a real
config has ~100 nodes; "billion laughs" has billions)"""


class _TooLarge(Exception):
    """A YAML document whose aliases expand beyond MAX_ALIAS_EXPANSION nodes (or refer to themselves)."""


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that measures the composed node graph before building Python objects.

    PyYAML shares an aliased node instead of copying it, so a 348-byte file of nested aliases loads
    fast and only explodes when the config is saved (8.9 s and 10.6 MB, issue 21). Counting the
    expanded size of the graph, each node once (memoised), costs as much as composing it.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        memo: dict[int, int] = {}
        expanded = _expanded_size(node, memo, set())
        if expanded - len(memo) > MAX_ALIAS_EXPANSION:
            raise _TooLarge(f"its anchors and aliases expand {len(memo)} nodes to {expanded:,}, more than the "
                            f"{MAX_ALIAS_EXPANSION:,} extra allowed")
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the tree that `node` stands for once every alias is copied out."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _TooLarge("its anchors and aliases refer to themselves (an endless document)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    size = 1 + sum(_expanded_size(child, memo, active) for child in children)
    active.discard(key)
    memo[key] = size
    return size


def load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load(text)`, refusing documents whose aliases expand beyond `MAX_ALIAS_EXPANSION`
    nodes or that nest too deeply (ConfigError naming `where`). Syntax errors raise yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge as err:
        raise ConfigError(f"{where}: {err}; write the values out instead of nesting aliases") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
