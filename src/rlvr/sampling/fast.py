"""FastSampler: our own batched decode loop, several times faster than `generate` on a CPU.

Where a GRPO step spends its time is here, so the loop does only what sampling needs:

- **Prefill each prompt once.** A group of G samples shares its prompt; the prompt is run once and
  its keys/values are copied to the G rows (`generate(num_return_sequences=G)` prefills G copies).
- **A preallocated KV cache with per-row lengths.** Row b holds its tokens in columns [0, len_b):
  prompts are right-padded, so the prefill needs only a causal mask and positions are `arange`;
  a decode step writes column len_b of every row at once and masks the columns past it.
- **Finished rows leave the batch.** When sequences end, live rows from the end of the batch move
  into the holes (only the moved rows' cache is copied), so the batch shrinks and stays a
  contiguous prefix; free slots are refilled with waiting prompts (continuous batching).
- **A lean Llama-family forward** (`_LeanLlama`: Llama, Qwen2, Qwen3) that reads the HF module
  weights (a LoRA adapter's delta merged in once per call: W + s*B@A) with q/k/v and gate/up fused
  into one matmul each, grouped-query attention without `repeat_kv`, and logits only for the last
  position. Any other architecture (or LoRA variant) runs the HF forward with a `DynamicCache`
  (`_HFForward`): slower, never wrong.
- **Fused sampling** (`sample_tokens`): temperature, then `topk` instead of a full-vocabulary sort;
  top-p is computed over the top-k candidates, exactly (a row whose candidates hold less than top_p
  of the mass falls back to a full sort); one uniform per token, inverse-CDF sampling.

The log-prob of each sampled token is log_softmax(logits / T) at that token: the distribution
*before* top-k/top-p truncation, as in `HFSampler` (TRL #4159). Greedy (T = 0) gives log-prob 0.0.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rlvr.sampling.base import Completion, SamplingParams

TOP_P_CANDIDATES = 256
"""top-p with top_k = 0 looks at this many most likely tokens first (exact: see `sample_tokens`)"""
LEAN_MODEL_TYPES = ("llama", "qwen2", "qwen3")


# ----------------------------------------------------------------------------------------------
# sampling: a pure function of logits
# ----------------------------------------------------------------------------------------------

def sample_tokens(logits: torch.Tensor, u: torch.Tensor, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens [B], log-probs [B]) with log-prob = log_softmax(z)[token].

    z = logits / T. HF order: temperature, then top-k (keep the k largest z), then top-p over the
    renormalised survivors (keep the most likely tokens while the mass *before* each is < top_p).
    `torch.topk` replaces the full sort: with top_k the survivors are the k candidates; with top_p
    alone we take TOP_P_CANDIDATES candidates, which is exact whenever they hold >= top_p of the
    mass (every token beyond them has mass-before >= top_p); rows where they do not are redone with
    a full sort. The token is chosen by inverse CDF with the uniform u (one per row): the first
    candidate whose cumulative kept mass exceeds u * total.
    """
    if temperature <= 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
    z = logits.float() / temperature  # [B, V]
    lse = torch.logsumexp(z, -1, keepdim=True)  # [B, 1]
    vocab = z.shape[-1]
    if top_k <= 0 and top_p >= 1.0:
        tokens = _inverse_cdf(torch.exp(z - lse), u)  # [B]
    else:
        k = min(top_k if top_k > 0 else TOP_P_CANDIDATES, vocab)
        vals, idx = torch.topk(z, k)  # [B, k] sorted descending
        probs = torch.softmax(vals, -1) if top_k > 0 else torch.exp(vals - lse)  # [B, k]
        tokens = idx.gather(1, _inverse_cdf(_top_p_mask(probs, top_p), u)[:, None])[:, 0]  # [B]
        if top_k <= 0 and k < vocab:
            short = (probs.sum(-1) < top_p).nonzero()[:, 0]  # rows the candidates do not cover
            if short.numel():
                vals, idx = torch.sort(z[short], -1, descending=True)  # [S, V]
                full = _top_p_mask(torch.exp(vals - lse[short]), top_p)
                tokens[short] = idx.gather(1, _inverse_cdf(full, u[short])[:, None])[:, 0]
    logprobs = (z.gather(1, tokens[:, None]) - lse)[:, 0]  # [B]
    return tokens, logprobs


def _top_p_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the sorted probabilities [B, k] whose preceding mass is >= top_p (the first always stays)."""
    if top_p >= 1.0:
        return probs
    before = torch.cumsum(probs, -1) - probs  # [B, k] mass of the more likely tokens
    return probs.masked_fill(before >= top_p, 0.0)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index j of the first column with cumsum(weights)[j] > u * sum(weights); weights [B, n], u [B]."""
    cdf = torch.cumsum(weights.double(), -1)  # [B, n] float64: tiny tail masses stay reachable
    target = (u.double() * cdf[:, -1])[:, None]  # [B, 1]
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=weights.shape[-1] - 1)


# ----------------------------------------------------------------------------------------------
# stop strings
# ----------------------------------------------------------------------------------------------

class StopStrings:
    """Decides cheaply whether a completion has just produced one of `stop_strings`.

    Like HF's StopStringCriteria, a stop string counts when it overlaps the newest token. The
    newest token must then contain the string's last character: a per-vocabulary mask of such
    tokens (computed once) skips the decode for almost every row; the rest decode only their tail.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str], vocab_size: int):
        self.strings = tuple(s for s in stop_strings if s)
        self.tokenizer = tokenizer
        self.tail = max((len(s) for s in self.strings), default=0) + 4
        mask = torch.ones(vocab_size, dtype=torch.bool)
        if self.strings:
            if tokenizer is None:
                raise ValueError("stop_strings need a tokenizer")
            last_chars = {s[-1] for s in self.strings} | {"\ufffd"}  # partial UTF-8 bytes decode to U+FFFD
            n = min(vocab_size, len(tokenizer))
            texts = tokenizer.batch_decode([[i] for i in range(n)])
            mask[:n] = torch.tensor([any(c in t for c in last_chars) for t in texts])
        self.candidate = mask  # [V] True: this token may complete a stop string

    def hit(self, token_ids: Sequence[int]) -> bool:
        """Whether the generated tokens (all of them, newest last) end a stop string."""
        text = self.tokenizer.decode(token_ids[-self.tail:])
        return any(s in text for s in self.strings)


def stop_index(token_ids: Sequence[int], stop_ids: Sequence[int], stops: StopStrings | None) -> int | None:
    """Length of the completion up to and including its first stop (token id or string), else None."""
    stop_ids = set(stop_ids)
    for i, tok in enumerate(token_ids):
        if tok in stop_ids:
            return i + 1
        if stops is not None and stops.strings and stops.candidate[tok] and stops.hit(token_ids[: i + 1]):
            return i + 1
    return None


# ----------------------------------------------------------------------------------------------
# weights: the HF modules, LoRA deltas merged
# ----------------------------------------------------------------------------------------------

class Unsupported(Exception):
    """The lean forward cannot run this model; the HF forward is used instead."""


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _linear(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Effective (weight, bias) of an nn.Linear or a peft LoRA Linear: W + sum_a s_a B_a A_a."""
    base = getattr(module, "base_layer", None)
    if base is None:
        if not isinstance(module, torch.nn.Linear):
            raise Unsupported(f"{type(module).__name__} is not a Linear")
        return module.weight, module.bias
    if not isinstance(base, torch.nn.Linear) or not hasattr(module, "get_delta_weight"):
        raise Unsupported(f"adapter layer {type(module).__name__}")
    weight = base.weight
    if module.disable_adapters or module.merged:
        return weight, base.bias
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(name):
            raise Unsupported(f"LoRA variant on {name}")
        weight = weight + module.get_delta_weight(name)
    return weight, base.bias


def _cat_bias(biases, weights):
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(biases, weights)])


def lean_weights(model) -> dict:
    """The tensors `_LeanLlama` needs, read from a Llama/Qwen2/Qwen3 model (raises Unsupported)."""
    base = _base_model(model)
    config = base.config
    if config.model_type not in LEAN_MODEL_TYPES:
        raise Unsupported(f"model type {config.model_type}")
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        raise Unsupported("activation / pretraining_tp")
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        raise Unsupported("sliding-window layers")
    inner = base.model
    if type(base.get_input_embeddings()) is not torch.nn.Embedding:
        raise Unsupported("wrapped embedding")
    layers = []
    for layer in inner.layers:
        att, mlp = layer.self_attn, layer.mlp
        qkv = [_linear(att.q_proj), _linear(att.k_proj), _linear(att.v_proj)]
        gate_up = [_linear(mlp.gate_proj), _linear(mlp.up_proj)]
        q_norm, k_norm = getattr(att, "q_norm", None), getattr(att, "k_norm", None)
        layers.append(dict(
            ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
            wqkv=torch.cat([w for w, _ in qkv]), bqkv=_cat_bias([b for _, b in qkv], [w for w, _ in qkv]),
            q_norm=None if q_norm is None else q_norm.weight, k_norm=None if k_norm is None else k_norm.weight,
            wo=_linear(att.o_proj), wgu=torch.cat([w for w, _ in gate_up]),
            bgu=_cat_bias([b for _, b in gate_up], [w for w, _ in gate_up]), wd=_linear(mlp.down_proj),
        ))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return dict(
        layers=layers, embed=base.get_input_embeddings().weight, norm=inner.norm.weight,
        lm_head=_linear(base.lm_head), rotary=inner.rotary_emb, eps=config.rms_norm_eps,
        n_heads=config.num_attention_heads, n_kv=config.num_key_value_heads, head_dim=head_dim,
    )


def _source_versions(model) -> tuple:
    """(data pointer, version) of every parameter: unchanged tuple = unchanged weights."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# the lean forward
# ----------------------------------------------------------------------------------------------

def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as HF computes it: w * x / sqrt(mean(x^2) + eps), in float32."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (RoFormer, as in HF Llama); cos/sin broadcast over heads."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class _LeanLlama:
    """Llama-family forward over our own KV cache: k[l], v[l] of shape [R, H_kv, T_max, hd]."""

    supports_refill = True

    def __init__(self, weights: dict, rows: int, max_len: int, dtype: torch.dtype, device):
        self.w = weights
        self.device = device
        shape = (rows, weights["n_kv"], max_len, weights["head_dim"])
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in weights["layers"]]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in weights["layers"]]

    def _qkv(self, layer: dict, h: torch.Tensor, cos, sin):
        """Projections, q/k norms (Qwen3) and RoPE; h [..., D] -> q [..., H, hd], k, v [..., H_kv, hd]."""
        w = self.w
        hd, nq, nkv = w["head_dim"], w["n_heads"], w["n_kv"]
        qkv = F.linear(h, layer["wqkv"], layer["bqkv"])  # [..., (H + 2 H_kv) hd]
        q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], -1)
        q, k, v = q.unflatten(-1, (nq, hd)), k.unflatten(-1, (nkv, hd)), v.unflatten(-1, (nkv, hd))
        if layer["q_norm"] is not None:
            q, k = _rms(q, layer["q_norm"], w["eps"]), _rms(k, layer["k_norm"], w["eps"])
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _mlp(self, layer: dict, x: torch.Tensor) -> torch.Tensor:
        h = _rms(x, layer["ln2"], self.w["eps"])
        gate, up = F.linear(h, layer["wgu"], layer["bgu"]).chunk(2, -1)  # [..., I] each
        return x + F.linear(F.silu(gate) * up, *layer["wd"])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms(x, self.w["norm"], self.w["eps"]), *self.w["lm_head"]).float()  # [B, V]

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor,
                source: torch.Tensor) -> torch.Tensor:
        """Run right-padded prompts ids [P, L] once; write their cache into slots `rows` [R] (row r
        copies prompt source[r]); return the next-token logits of each prompt [P, V]."""
        P, L = ids.shape
        x = F.embedding(ids, self.w["embed"])  # [P, L, D]
        cos, sin = self.w["rotary"](x, torch.arange(L, device=ids.device)[None].expand(P, L))  # [P, L, hd]
        cos, sin = cos[:, :, None], sin[:, :, None]  # [P, L, 1, hd] broadcast over heads
        for i, layer in enumerate(self.w["layers"]):
            q, k, v = self._qkv(layer, _rms(x, layer["ln1"], self.w["eps"]), cos, sin)  # [P, L, H, hd]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [P, H, L, hd]
            self.k[i][rows, :, :L] = k.index_select(0, source)
            self.v[i][rows, :, :L] = v.index_select(0, source)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # [P, H, L, hd]
            x = x + F.linear(att.transpose(1, 2).flatten(2), *layer["wo"])  # [P, L, D]
            x = self._mlp(layer, x)
        last = x[torch.arange(P, device=ids.device), lengths - 1]  # [P, D]
        return self._logits(last)

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, t_max: int) -> torch.Tensor:
        """One step for the active rows 0..B-1: tokens [B] at positions pos [B] (< t_max) -> logits [B, V]."""
        w = self.w
        B = tokens.shape[0]
        nkv, hd = w["n_kv"], w["head_dim"]
        rows = torch.arange(B, device=tokens.device)
        x = F.embedding(tokens, w["embed"])  # [B, D]
        cos, sin = w["rotary"](x, pos[:, None])  # [B, 1, hd]: broadcasts over the heads of [B, H, hd]
        cols = torch.arange(t_max, device=tokens.device)
        mask = torch.zeros(B, 1, 1, t_max, dtype=torch.float32, device=tokens.device)
        mask.masked_fill_((cols[None, :] > pos[:, None])[:, None, None], float("-inf"))  # [B, 1, 1, T] future
        scale = hd ** -0.5
        for i, layer in enumerate(w["layers"]):
            q, k, v = self._qkv(layer, _rms(x, layer["ln1"], w["eps"]), cos, sin)  # [B, H, hd]
            self.k[i][rows, :, pos] = k
            self.v[i][rows, :, pos] = v
            keys, values = self.k[i][:B, :, :t_max], self.v[i][:B, :, :t_max]  # [B, H_kv, T, hd]
            q = q.view(B, nkv, -1, hd)  # [B, H_kv, G, hd]: query heads grouped by their KV head
            scores = torch.matmul(q, keys.transpose(-1, -2)) * scale + mask  # [B, H_kv, G, T]
            att = torch.matmul(torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype), values)
            x = x + F.linear(att.reshape(B, -1), *layer["wo"])  # [B, D]
            x = self._mlp(layer, x)
        return self._logits(x)

    def retain(self, order: torch.Tensor, t_max: int) -> None:
        """Keep the rows `order` [n] (new row i = old row order[i]), copying only the rows that move
        (columns < t_max): a live row from the end fills a finished row's slot."""
        dst = (order != torch.arange(order.shape[0], device=order.device)).nonzero()[:, 0]  # [m]
        if dst.numel():
            src = order[dst]
            for cache in (*self.k, *self.v):
                cache[dst, :, :t_max] = cache[src, :, :t_max]


class _HFForward:
    """Any causal LM: the HF forward with a `DynamicCache`, left padding and an attention mask.

    The correct-but-slower path. Rows leave by `Cache.batch_select_indices` (a full copy); new
    prompts enter only when the batch is empty.
    """

    supports_refill = False

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = None
        self.mask = None  # [B, T] 1 for real tokens

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor,
                source: torch.Tensor) -> torch.Tensor:
        P, L = ids.shape
        cols = torch.arange(L, device=ids.device)
        mask = (cols[None, :] >= (L - lengths)[:, None]).long()  # [P, L] left padding
        shift = (cols[None, :] - (L - lengths)[:, None]) % L  # [P, L] right-padded column of each slot
        left = ids.gather(1, shift) * mask  # [P, L]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [P, L]
        out = self.model(input_ids=left, attention_mask=mask, position_ids=position_ids, use_cache=True,
                         logits_to_keep=1)
        self.cache = out.past_key_values
        self.cache.batch_select_indices(source)
        self.mask = mask.index_select(0, source)
        return out.logits[:, -1].float()  # [P, V]

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, t_max: int) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(tokens.shape[0], 1)], 1)  # [B, T + 1]
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=pos[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()  # [B, V]

    def retain(self, order: torch.Tensor, t_max: int) -> None:
        """Keep the rows `order` [n] (new row i = old row order[i])."""
        self.cache.batch_select_indices(order)
        self.mask = self.mask.index_select(0, order)


# ----------------------------------------------------------------------------------------------
# the sampler
# ----------------------------------------------------------------------------------------------

class _eval_mode:
    """Sample with dropout off (the model's training flags are restored afterwards)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag


class FastSampler:
    """Our decode loop (see the module docstring); implements `rlvr.sampling.base.Sampler`.

    model: a causal LM (a peft `PeftModel` too: the active LoRA deltas are merged into a private
    copy of the affected weights once per call, or once while the weights do not change).
    max_batch_size: the most sequences decoded at once; more wait and fill slots as rows finish.
    max_cache_bytes: cap on the KV cache; lowers the batch size for long generations.
    lean: False forces the generic HF-forward path (for tests and comparison).
    compile: torch.compile the lean decode step (measured not to pay off on a 2-core CPU).
    """

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = 64, max_cache_bytes: float = 4e9,
                 lean: bool = True, compile: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_cache_bytes = max_cache_bytes
        self.lean = lean
        self.compile = compile
        self.path = ""
        """the forward used by the last call: "lean" or "hf" (the generic HF-forward fallback)"""
        self.unsupported: str | None = None
        """why the lean forward cannot run this model (None: it can)"""
        self._weights: tuple | None = None  # (versions, weights)
        self._stops: dict = {}

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *, num_samples: int = 1,
                 generator: torch.Generator | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        prompts = [[int(t) for t in p] for p in prompts]
        if any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        n_seq = len(prompts) * num_samples
        if n_seq == 0 or params.max_new_tokens <= 0:
            return [Completion(i // num_samples, [], [], "length") for i in range(n_seq)]
        with torch.inference_mode(), _eval_mode(self.model):
            engine, rows = self._engine(prompts, params, n_seq)
            run = _Run(engine, rows, prompts, num_samples, params, self._stop_strings(params),
                       generator, progress)
            return run.run()

    def _engine(self, prompts, params: SamplingParams, n_seq: int):
        """The lean engine when the model allows it, else the HF forward; and the batch size."""
        device = next(self.model.parameters()).device
        max_len = max(len(p) for p in prompts) + params.max_new_tokens
        weights = self._lean_weights() if self.lean else None
        self.path = "hf" if weights is None else "lean"
        if weights is None:
            return _HFForward(self.model), min(n_seq, self.max_batch_size)
        dtype = weights["embed"].dtype
        per_row = 2 * len(weights["layers"]) * weights["n_kv"] * weights["head_dim"] * max_len * dtype.itemsize
        rows = max(1, min(n_seq, self.max_batch_size, int(self.max_cache_bytes // per_row)))
        engine = _LeanLlama(weights, rows, max_len, dtype, device)
        if self.compile:
            engine.decode = torch.compile(engine.decode, dynamic=True)
        return engine, rows

    def _lean_weights(self) -> dict | None:
        versions = _source_versions(self.model)
        if self._weights is not None and self._weights[0] == versions:
            return self._weights[1]
        try:
            weights = lean_weights(self.model)
            self.unsupported = None
        except (Unsupported, AttributeError) as err:
            weights, self.unsupported = None, str(err) or type(err).__name__
        self._weights = (versions, weights)
        return weights

    def _stop_strings(self, params: SamplingParams) -> StopStrings | None:
        if not params.stop_strings:
            return None
        key = tuple(params.stop_strings)
        if key not in self._stops:
            vocab = _base_model(self.model).get_output_embeddings().weight.shape[0]
            self._stops[key] = StopStrings(self.tokenizer, key, vocab)
        return self._stops[key]


class _Run:
    """One `generate` call: the waiting sequences, the active rows (a prefix of the cache), the outputs.

    Sequence s = prompt (s // G), sample (s % G). Its t-th token uses the uniform u[s, t], drawn
    up front from the generator, so a sequence's randomness does not depend on the batching.
    """

    def __init__(self, engine, rows: int, prompts: list[list[int]], group: int, params: SamplingParams,
                 stops: StopStrings | None, generator: torch.Generator | None, progress):
        self.engine, self.rows, self.prompts, self.group, self.params = engine, rows, prompts, group, params
        self.stops, self.stop_ids, self.progress = stops, set(params.stop_token_ids), progress
        n_seq = len(prompts) * group
        self.device = engine.device
        self.u = None
        if params.temperature > 0:
            self.u = torch.rand(n_seq, params.max_new_tokens, generator=generator, dtype=torch.float64)
        self.tokens: list[list[int]] = [[] for _ in range(n_seq)]
        self.logprobs: list[list[float]] = [[] for _ in range(n_seq)]
        self.finish: list[str] = ["length"] * n_seq
        self.pending = deque(range(n_seq))
        self.seq: list[int] = []  # the sequence in each active row
        self.pos = torch.zeros(0, dtype=torch.long, device=self.device)  # [B] tokens in each row's cache
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # [B] the token to feed next

    def run(self) -> list[Completion]:
        while self.pending or self.seq:
            if self.pending and len(self.seq) < self.rows and (self.engine.supports_refill or not self.seq):
                self._admit()
            if self.seq:
                self._step()
        return [Completion(s // self.group, self.tokens[s], self.logprobs[s], self.finish[s])
                for s in range(len(self.tokens))]

    def _admit(self) -> None:
        """Prefill the prompts of the next waiting sequences (each distinct prompt once) into free rows."""
        new = [self.pending.popleft() for _ in range(min(self.rows - len(self.seq), len(self.pending)))]
        uniq = list(dict.fromkeys(s // self.group for s in new))
        where = {p: i for i, p in enumerate(uniq)}
        lengths = torch.tensor([len(self.prompts[p]) for p in uniq], device=self.device)  # [P]
        ids = torch.zeros(len(uniq), int(lengths.max()), dtype=torch.long, device=self.device)  # [P, L]
        for i, p in enumerate(uniq):
            ids[i, : len(self.prompts[p])] = torch.tensor(self.prompts[p])
        source = torch.tensor([where[s // self.group] for s in new], device=self.device)  # [m]
        first = len(self.seq)
        rows = torch.arange(first, first + len(new), device=self.device)
        logits = self.engine.prefill(ids, lengths, rows, source)  # [P, V]
        self.seq += new
        self.pos = torch.cat([self.pos, lengths[source]])
        self.last = torch.cat([self.last, torch.zeros_like(source)])
        self._sample(logits.index_select(0, source), range(first, first + len(new)))

    def _step(self) -> None:
        """Feed every active row its last token, sample the next."""
        t_max = int(self.pos.max()) + 1
        logits = self.engine.decode(self.last, self.pos, t_max)  # [B, V]
        self.pos += 1
        self._sample(logits, range(len(self.seq)))

    def _sample(self, logits: torch.Tensor, rows: range) -> None:
        """Sample for `rows` (their logits [m, V]), record the tokens, retire finished rows."""
        p, seqs = self.params, self.seq[rows.start: rows.stop]
        u = None
        if self.u is not None:
            steps = torch.tensor([len(self.tokens[s]) for s in seqs])
            u = self.u[torch.tensor(seqs), steps].to(self.device)  # [m]
        tokens, logprobs = sample_tokens(logits, u, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
        self.last[rows.start: rows.stop] = tokens
        candidate = self.stops.candidate[tokens.cpu()].tolist() if self.stops else [False] * len(seqs)
        done = []
        for row, s, tok, lp, cand in zip(rows, seqs, tokens.tolist(), logprobs.tolist(), candidate):
            self.tokens[s].append(tok)
            self.logprobs[s].append(lp)
            if tok in self.stop_ids or (cand and self.stops.hit(self.tokens[s])):
                self.finish[s] = "stop"
                done.append(row)
            elif len(self.tokens[s]) >= p.max_new_tokens:
                done.append(row)
        if self.progress is not None:
            self.progress(len(seqs))
        if done:
            self._retire(done)

    def _retire(self, done: list[int]) -> None:
        """Drop finished rows: live rows from the end of the batch move into their slots."""
        n, finished = len(self.seq), set(done)
        n_new = n - len(finished)
        holes = [r for r in sorted(finished) if r < n_new]
        movers = [r for r in range(n_new, n) if r not in finished]
        order = list(range(n_new))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        t_max = int(self.pos.max()) if n else 0
        order_t = torch.tensor(order, dtype=torch.long, device=self.device)
        if n_new:
            self.engine.retain(order_t, t_max)
        self.seq = [self.seq[o] for o in order]
        self.pos, self.last = self.pos[order_t], self.last[order_t]
