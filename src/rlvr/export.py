"""Ship a trained model: a GGUF file for llama.cpp / Ollama / LM Studio, and an upload to the Hub.

`export_gguf(model_or_run_dir, out_path, dtype)` writes one GGUF file for a Llama-architecture
model (SmolLM2 is Llama) or a Qwen2 one; any other architecture is refused with its name.

This is our own short writer on the `gguf` package (`GGUFWriter`, `TensorNameMap`), not a copy of
llama.cpp's `convert_hf_to_gguf.py`; it follows that converter (its `LlamaModel` / `Qwen2Model`
classes, `_set_vocab_gpt2`, `get_vocab_base`, `get_vocab_base_pre`) on every point a reader of the
file depends on:
  - tensor names from gguf's `TensorNameMap`; 1-D tensors and norms stay f32, the others take the
    requested type (f32, f16, or q8_0 quantised by `gguf.quants`, f16 where a row does not fit);
  - Llama's q/k projections permuted from Hugging Face's rotate-half RoPE layout back to the
    interleaved layout llama.cpp computes with (`_permute_qk`); Qwen2 is stored unpermuted;
  - metadata: context length, embedding / feed-forward length, heads, kv heads, rope theta and
    dimension, rms eps, vocabulary size, file type;
  - the tokenizer as a byte-level BPE ("gpt2"): tokens, merges, token types (added tokens CONTROL
    when special, USER_DEFINED otherwise), bos / eos / unk / pad ids, add_bos, the chat template,
    and the pre-tokenizer name llama.cpp picks by hashing the tokens of its probe text `_CHKTXT`
    (the same text and hashes as the converter, for the few tokenizers named in `_PRE_BY_HASH`).
Departures: only the architectures above; no RoPE scaling (refused, not written wrong); no
sentencepiece vocabularies; safetensors weights only.

`push_to_hub(run_dir, repo_id, ...)` uploads the merged model (or the LoRA adapter) with a generated
model card, in one commit through huggingface_hub's upload API, after a fast pre-flight that fails
in seconds, naming the problem, when there is no token, no network or a refused token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "q8_0")

# llama.cpp's pre-tokenizer probe (convert_hf_to_gguf.py, get_vocab_base_pre): the sha256 of
# str(tokenizer.encode(_CHKTXT)) names the pre-tokenizer regex llama.cpp must use.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}
# Hugging Face architecture -> (gguf architecture name, permute q/k)
_ARCHS = {"LlamaForCausalLM": ("LLAMA", True), "Qwen2ForCausalLM": ("QWEN2", False)}


class ExportError(ValueError):
    """A model, run directory or option that cannot be exported; the message says which and why."""


# ---------------------------------------------------------------------------------------------- GGUF


def find_model_dir(model_or_run_dir: str | Path) -> Path:
    """The Hugging Face model directory to export: the path itself, or a run's final merged model.

    Accepts what `rlvr.models.resolve_model_path` accepts (a run directory of `train`, `sft` or `run`,
    a model directory, the `smollm2-135m` alias); it must end in a local directory with config.json.
    """
    from rlvr.models import ModelNotFound, resolve_model_path

    try:
        path, tried = resolve_model_path(str(model_or_run_dir))
    except ModelNotFound as err:
        raise ExportError(str(err)) from err
    path = Path(path)
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise ExportError(f"{path} is a LoRA adapter; export the merged model (RUN/final/merged)")
        raise ExportError(f"'{model_or_run_dir}' is not a local model or run directory (tried {'; '.join(tried)})")
    return path


def default_gguf_path(model_dir: Path, dtype: str) -> Path:
    """RUN/final/merged -> RUN/final/model-f16.gguf: next to the model, outside the folder that is uploaded."""
    return model_dir.parent / f"model-{dtype}.gguf"


def export_gguf(model_or_run_dir: str | Path, out_path: str | Path | None = None, dtype: str = "f16") -> Path:
    """Write the model in `model_or_run_dir` (a run directory or a model directory) as one GGUF file.

    dtype: f32 (exact), f16 (half the size), q8_0 (8-bit blocks of 32, about a quarter of f32).
    The file is written to a temporary sibling and renamed, so a failed export leaves no half file.
    """
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    if dtype not in DTYPES:
        raise ExportError(f"export_gguf: dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    model_dir = find_model_dir(model_or_run_dir)
    config = AutoConfig.from_pretrained(model_dir)
    arch_name, permute = _architecture(config)
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = Path(out_path) if out_path is not None else default_gguf_path(model_dir, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)  # GGUFWriter opens the file itself
    tmp = Path(name)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_name(_model_name(model_dir))
        _add_hparams(writer, config, permute, dtype)
        _add_tokenizer(writer, tokenizer, config.vocab_size)
        _add_tensors(writer, model_dir, config, arch, permute, dtype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _architecture(config) -> tuple[str, bool]:
    """(gguf architecture, permute q/k) for a supported config; refuse the others by name."""
    archs = list(getattr(config, "architectures", None) or [])
    name = archs[0] if archs else f"model_type={config.model_type}"
    if name not in _ARCHS:
        raise ExportError(f"GGUF export supports {', '.join(_ARCHS)}; this model is {name}")
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ExportError(f"GGUF export does not write RoPE scaling ({rope.get('rope_type', rope.get('type'))}) yet")
    return _ARCHS[name]


def _model_name(model_dir: Path) -> str:
    """A run's directory name (RUN/final/merged -> RUN), else the model directory's name."""
    if model_dir.name == "merged" and model_dir.parent.name == "final":
        run = model_dir.parent.parent
        return run.parent.name if run.name in ("grpo", "sft") else run.name
    return model_dir.name


def _add_hparams(writer, config, permute: bool, dtype: str) -> None:
    """The hyper-parameters llama.cpp reads (TextModel.set_gguf_parameters + LlamaModel's)."""
    import gguf

    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if permute:  # Llama: llama.cpp's LlamaModel writes the vocabulary size and the rope dimension
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE vocabulary as llama.cpp's `_set_vocab_gpt2` writes it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type', type(tokenizer).__name__)}")
    tokens, types = _vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    probe = tokenizer("a")["input_ids"]  # does the tokenizer itself add BOS / EOS?
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    writer.add_add_space_prefix(bool(getattr(tokenizer, "add_prefix_space", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, and their types (get_vocab_base): ids the tokenizer lacks become UNUSED [PADi]."""
    import gguf

    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            text = by_id[i]
            special = added[i].special or (text.startswith("<|") and text.endswith("|>"))
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the pre-tokenizer, found as its converter finds it (hash of the probe's tokens)."""
    digest = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    if digest not in _PRE_BY_HASH:
        log.warning("unknown BPE pre-tokenizer (probe hash %s); writing 'default': llama.cpp may split "
                    "some text differently from transformers", digest[:12])
    return _PRE_BY_HASH.get(digest, "default")


def _add_tensors(writer, model_dir: Path, config, arch, permute: bool, dtype: str) -> None:
    """Every weight under its GGUF name, q/k permuted for Llama, in the requested type."""
    import gguf

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in _safetensors(model_dir):
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ExportError(f"GGUF export: no GGUF name for the tensor '{name}' ({arch.name})")
        data = tensor.float().numpy()  # [out, in] or [n]
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute_qk(data, heads)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute_qk(data, kv_heads)
        array, raw_dtype = _encode(data, new_name, dtype)
        writer.add_tensor(new_name, array, raw_dtype=raw_dtype)


def _safetensors(model_dir: Path):
    """(name, tensor) for every weight of the model's safetensors file(s)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"GGUF export reads safetensors weights; {model_dir} has none")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half RoPE layout -> llama.cpp's interleaved pairs, per head.

    Within each head of size d, HF rotates dimension i with i + d/2; llama.cpp rotates 2i with 2i+1.
    Rows [h, 2, d/2] are swapped to [h, d/2, 2]: row (h, j, i) moves to (h, i, j).
    """
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])  # [H, 2, d/2, (in)]
            .swapaxes(1, 2)  # [H, d/2, 2, (in)]
            .reshape(w.shape))


def _encode(data: np.ndarray, name: str, dtype: str):
    """(array, raw_dtype) for GGUFWriter.add_tensor: 1-D and norm weights f32, others as asked."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or name.endswith("_norm.weight") or dtype == "f32":
        return data.astype(np.float32), Q.F32
    if dtype == "q8_0":
        try:
            return gguf.quants.quantize(data.astype(np.float32), Q.Q8_0), Q.Q8_0
        except gguf.quants.QuantError as err:  # a row that is not a multiple of 32: f16, as llama.cpp does
            log.warning("%s: %s; writing f16", name, err)
    return data.astype(np.float16), Q.F16


# ----------------------------------------------------------------------------------------------- Hub

HUB_WHAT = ("merged", "adapter")


class HubError(RuntimeError):
    """An upload that cannot start (no token, offline, unreachable or refusing endpoint); says which."""


@dataclass
class UploadPlan:
    """What `push_to_hub` sends: the files of one folder and a generated model card, in one commit."""

    repo_id: str
    folder: Path
    files: list[str]  # paths relative to `folder`, README.md excepted (the card replaces it)
    card: str
    private: bool = False
    what: str = "merged"
    summary: dict = field(default_factory=dict)


def find_final_dir(run_dir: str | Path) -> Path:
    """RUN/final (rlvr train, rlvr sft) or RUN/grpo/final, RUN/sft/final (rlvr run, the pipeline)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    for candidate in (run_dir / "final", run_dir / "grpo" / "final", run_dir / "sft" / "final"):
        if candidate.is_dir():
            return candidate
    raise ExportError(f"{run_dir} holds no final model (looked for final/, grpo/final/, sft/final/)")


def build_upload(run_dir: str | Path, repo_id: str, *, what: str = "merged", private: bool = False) -> UploadPlan:
    """The folder (RUN/final/merged or RUN/final/adapter), its files and the model card for a run."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if what not in HUB_WHAT:
        raise ExportError(f"push_to_hub: what='{what}' is not one of {', '.join(HUB_WHAT)}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ExportError(f"push_to_hub: '{repo_id}' is not a Hub repo id (owner/name): {err}") from err
    folder = find_final_dir(run_dir) / what
    if not folder.is_dir():
        raise ExportError(f"push_to_hub: {folder} does not exist (a full fine-tune has no adapter; use merged)")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != "README.md" and not p.name.startswith("."))
    summary = _read_json(Path(run_dir) / "summary.json")
    card = model_card(repo_id, summary, base_model=_base_model(Path(run_dir), folder, summary), what=what)
    return UploadPlan(repo_id, folder, files, card, private, what, summary)


def push_to_hub(run_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False, *,
                what: str = "merged", endpoint: str | None = None, timeout: float = 5.0) -> str:
    """Upload a run's merged model (or its LoRA adapter) with a model card; return the commit URL.

    The token is `token`, else $HF_TOKEN, else the one `hf auth login` saved; it is never printed.
    Before anything is sent, a pre-flight (whoami, `timeout` seconds, no retries) fails fast with a
    message naming the problem: HF_HUB_OFFLINE set, no token, endpoint unreachable, token refused.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    token = _token(token)  # first: refusing without a token or offline costs nothing
    endpoint = _endpoint(endpoint)
    plan = build_upload(run_dir, repo_id, what=what, private=private)
    preflight(endpoint, token, timeout=timeout)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name)) for name in plan.files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card.encode()))
    info = api.create_commit(plan.repo_id, operations, commit_message=f"Upload {plan.what} model trained with rlvr",
                             repo_type="model")
    return str(getattr(info, "commit_url", info))


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _token(token: str | None) -> str:
    """The token to upload with, or a HubError saying how to give one (offline mode is refused first)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubError("push_to_hub: HF_HUB_OFFLINE is set; unset it to upload")
    if not token:
        from huggingface_hub import get_token

        token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubError("push_to_hub: no Hugging Face token; pass --token, set HF_TOKEN, or run `hf auth login`")
    return token


def preflight(endpoint: str, token: str, *, timeout: float = 5.0) -> str:
    """Check the endpoint answers and accepts the token (GET /api/whoami-v2); return the user name."""
    import httpx

    url = f"{endpoint}/api/whoami-v2"
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except httpx.TimeoutException:
        raise HubError(f"push_to_hub: {endpoint} did not answer within {timeout:g} s (no network?)") from None
    except httpx.HTTPError as err:
        raise HubError(f"push_to_hub: cannot reach {endpoint} ({type(err).__name__}: {err}); "
                       "no network, or set HF_ENDPOINT") from None
    if response.status_code in (401, 403):
        raise HubError(f"push_to_hub: {endpoint} refused the token (HTTP {response.status_code}); "
                       "it needs write access")
    if response.status_code != 200:
        raise HubError(f"push_to_hub: {url} answered HTTP {response.status_code}")
    try:
        return str(response.json().get("name", ""))
    except ValueError:
        raise HubError(f"push_to_hub: {url} did not answer as the Hugging Face Hub does") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _base_model(run_dir: Path, folder: Path, summary: dict) -> str | None:
    """The Hub id of the model the run started from: the run's model (summary.json), else the adapter's
    base (for a pipeline run that is the SFT model inside the run); None when only a local path is known."""
    from rlvr.models import ALIASES, portable_base_reference

    adapter = _read_json(folder / "adapter_config.json") or _read_json(folder.parent / "adapter" / "adapter_config.json")
    for name in (summary.get("model"), adapter.get("base_model_name_or_path")):
        if not name:
            continue
        name = ALIASES[name][2] if name in ALIASES else portable_base_reference(name)
        if not Path(name).expanduser().is_absolute() and not Path(name).expanduser().exists():
            return name
    return None


def model_card(repo_id: str, summary: dict, *, base_model: str | None, what: str = "merged") -> str:
    """A README.md for the Hub: front matter (base model, library, tags), the run's task and accuracies."""
    library = "peft" if what == "adapter" else "transformers"
    front = ["---", f"library_name: {library}", "pipeline_tag: text-generation",
             "tags:", "- rlvr", "- grpo", "- reinforcement-learning"]
    if base_model:
        front[1:1] = [f"base_model: {base_model}"]
    lines = front + ["---", "", f"# {repo_id.split('/')[-1]}", ""]
    task = summary.get("task", "a verifiable task")
    lines += [f"Trained with rlvr (GRPO, reinforcement learning from "
              f"verifiable rewards) on the task `{task}`" + (f", starting from `{base_model}`." if base_model else "."), ""]
    rows = summary.get("before_after") or []
    if rows:
        lines += ["| stage | accuracy | format | examples |", "|---|---|---|---|"]
        lines += [f"| {r.get('stage', '?')} | {_pct(r.get('accuracy'))} | {_pct(r.get('format_rate'))} | {r.get('n', '')} |"
                  for r in rows]
        lines += ["", "Held-out accuracy measured by rlvr's evaluation of the task's verifier.", ""]
    loader = ("from peft import AutoPeftModelForCausalLM\n"
              f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo_id}\")" if what == "adapter" else
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
              f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")")
    lines += ["## Use", "", "```python", loader, "```", ""]
    return "\n".join(lines)


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else ""
