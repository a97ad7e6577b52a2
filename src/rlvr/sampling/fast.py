"""FastSampler: our own batched decode loop, about 3x the tokens/s of `generate` on a CPU.

Generation is most of a GRPO step, so the loop does only what sampling needs:

- **Each prompt is prefilled once and stored once.** The G samples of a group share the prompt's
  keys/values in one prompt *slot* (`generate(num_return_sequences=G)` prefills and stores G
  copies). A decode step reads a slot once for all its rows: their queries are stacked into one
  matmul per slot, then the per-row generated part is attended as usual (`_LeanLlama._attend`).
  A prefix common to all the prompts prefilled together (a system prompt) is run once.
- **Preallocated caches** (kept between calls): prompt slots [S, H_kv, L_p, hd] and per-row
  generated tokens [R, H_kv, L_g, hd]. Prompts are right-padded, so the prefill needs only a
  causal mask; a decode step writes one column per row and masks the columns past each row's end.
- **Finished rows leave the batch.** Live rows from the end move into the holes (only their
  generated cache is copied), the batch stays a contiguous prefix and shrinks, and free rows are
  refilled with waiting prompts (continuous batching, when there are more than max_batch_size).
- **A lean Llama-family forward** (Llama, Qwen2, Qwen3) over the HF module weights, with LoRA
  deltas merged once per weight change (W + s B A), q/k/v and gate/up fused into one matmul
  each, RMSNorm weights and the attention scale folded into the matmuls, matmuls computed as
  weights stored transposed (x @ W^T as a row-major GEMM) and the lm_head packed for oneDNN
  (`_Dense`: +18% in a decode step over the earlier W @ x^T), addmm for the residual adds,
  grouped-query attention without `repeat_kv`, and logits only for the last position.
  Other architectures (or LoRA variants) run the HF forward with a `DynamicCache`
  (`_HFForward`): slower, never wrong.
- **Fused sampling** (`sample_tokens`): one softmax, `topk` instead of a full-vocabulary sort,
  exact top-p from as few candidates as each row needs, inverse-CDF sampling with one uniform per
  token (drawn up front per sequence, so results do not depend on the batching).

Measured not to pay off here (2 CPU cores): torch.compile of the decode step (2-3 minutes of
compiling per shape, no faster), SDPA for the one-token decode attention, MKL-prepacked weights
(`mkl._mkl_linear`: no faster in a whole decode step), W @ x^T (the previous layout, chosen from
isolated matmuls: 10% slower than x @ W^T in whole decode steps).

The log-prob of each sampled token is log_softmax(logits / T) at that token: the distribution
*before* top-k/top-p truncation, as in `HFSampler` (TRL #4159). Greedy (T = 0) gives log-prob 0.0.
Numerics differ from HF's forward by float rounding only (~1e-5 in the logits): greedy tokens
match `generate(do_sample=False)` unless two logits tie to that precision.
"""

from __future__ import annotations

import heapq
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rlvr.models import base_model
from rlvr.sampling.base import Completion, SamplingParams, StopStrings, cached_stop_strings

TOP_P_STAGES = (64, 512, 4096)
"""top-p without top-k looks at this many most likely tokens first, then (rows not covered) more"""
CDF_BLOCK = 1024
LEAN_MODEL_TYPES = ("llama", "qwen2", "qwen3")


# ----------------------------------------------------------------------------------------------
# sampling: a pure function of logits
# ----------------------------------------------------------------------------------------------

def sample_tokens(logits: torch.Tensor, u: torch.Tensor | None, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens [B], log-probs [B]), log-prob = log softmax(logits / T)[token].

    HF order: temperature, then top-k (keep the k most likely), then top-p over the renormalised
    survivors (keep the most likely tokens while the mass *before* each is < top_p). Instead of
    sorting the vocabulary, `torch.topk` takes candidates: with top_k they are the survivors; with
    top_p alone the first TOP_P_STAGES[0] candidates are exact whenever they hold >= top_p of the
    mass (every token beyond them has mass-before >= top_p), and the rows they do not cover are
    redone with more candidates, then with a full sort: exact top-p, at the cost of a topk of 64
    for most rows. The token is drawn by inverse CDF with one uniform u per row.
    """
    if temperature <= 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
    z = logits.float() if temperature == 1.0 else logits.float() / temperature  # [B, V]
    probs = torch.softmax(z, -1)  # [B, V] the untruncated distribution
    if top_k > 0:
        vals, idx = torch.topk(probs, min(top_k, probs.shape[-1]))  # [B, k] sorted descending
        vals = vals / vals.sum(-1, keepdim=True)  # renormalised over the top k
        tokens = idx.gather(1, _inverse_cdf(_top_p_mask(vals, top_p), u)[:, None])[:, 0]
    elif top_p < 1.0:
        tokens = _sample_top_p(probs, top_p, u)
    else:
        tokens = _inverse_cdf_blocked(probs, u)
    logprobs = probs.gather(1, tokens[:, None])[:, 0].log()  # [B] relative error ~1e-7 of log_softmax
    return tokens, logprobs


def _sample_top_p(probs: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Exact top-p from as few candidates as each row needs (see `sample_tokens`); probs [B, V]."""
    vocab = probs.shape[-1]
    tokens = torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)  # [B]
    rows = torch.arange(probs.shape[0], device=probs.device)  # rows still to sample
    for k in (*[k for k in TOP_P_STAGES if k < vocab], vocab):
        sub = probs if rows.numel() == probs.shape[0] else probs.index_select(0, rows)  # [S, V]
        if k < vocab:
            vals, idx = torch.topk(sub, k)  # [S, k]
            covered = vals.sum(-1) >= top_p  # [S]
        else:
            vals, idx = torch.sort(sub, -1, descending=True)  # [S, V]
            covered = torch.ones_like(rows, dtype=torch.bool)
        done = covered.nonzero()[:, 0]
        pick = _inverse_cdf(_top_p_mask(vals[done], top_p), u[rows[done]])  # [S']
        tokens[rows[done]] = idx[done].gather(1, pick[:, None])[:, 0]
        rows = rows[~covered]
        if rows.numel() == 0:
            break
    return tokens


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


def _inverse_cdf_blocked(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """`_inverse_cdf` over a whole vocabulary [B, V] in two levels: the block of CDF_BLOCK columns
    holding the target (from per-block sums), then the column inside it. Saves a float64 cumsum
    over V columns; the result is the same up to rounding."""
    B, V = weights.shape
    n_blocks = -(-V // CDF_BLOCK)
    if n_blocks * CDF_BLOCK != V:
        weights = F.pad(weights, (0, n_blocks * CDF_BLOCK - V))  # zero weight: never drawn
    blocks = weights.view(B, n_blocks, CDF_BLOCK)  # [B, nb, blk]
    cdf = torch.cumsum(blocks.sum(-1).double(), -1)  # [B, nb]
    target = u.double() * cdf[:, -1]  # [B]
    block = torch.searchsorted(cdf, target[:, None], right=True)[:, 0].clamp_(max=n_blocks - 1)  # [B]
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0], 0.0)  # [B]
    inner = blocks[torch.arange(B, device=weights.device), block]  # [B, blk]
    inner_cdf = torch.cumsum(inner.double(), -1)  # [B, blk]
    col = torch.searchsorted(inner_cdf, (target - before)[:, None], right=True)[:, 0]
    last = torch.searchsorted(inner_cdf, inner_cdf[:, -1:].contiguous(), right=False)[:, 0]  # last non-zero weight
    return block * CDF_BLOCK + torch.minimum(col, last)  # (rounding can put the target past it)


# ----------------------------------------------------------------------------------------------
# weights: the HF modules, LoRA deltas merged
# ----------------------------------------------------------------------------------------------

class Unsupported(Exception):
    """The lean forward cannot run this model; the HF forward is used instead."""


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


PACKED_MIN_OUT = 8192
"""a projection with at least this many outputs (the lm_head) is packed for oneDNN (`_Dense`)"""
PACKED_BATCH = 64
"""the batch size oneDNN's packed layout is chosen for (any batch size works)"""


def _onednn_packs(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and weight.shape[0] >= PACKED_MIN_OUT and torch.backends.mkldnn.is_available())


class _Dense:
    """y = x @ W^T + b (+ residual, added in place), x [N, K] -> y [N, out] row-major.

    Owns its copy of W [out, K] (`_fused` makes it), in the layout the decode step multiplies
    fastest on a CPU, measured in whole decode steps (batch 64, 2 cores, `bench/bench_sampler.py`):
    W^T contiguous, so y = x @ W^T is a plain row-major GEMM (+10% over computing W @ x^T); the
    lm_head (out >= PACKED_MIN_OUT) packed by oneDNN for a batch of PACKED_BATCH rows (another +8%;
    alone, 180 against 150 GFLOP/s for [64, 576] x [576, 49152]).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.b, self.wt, self.packed = bias, None, None
        if _onednn_packs(weight):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_BATCH)
        else:
            self.wt = weight.t().contiguous()  # [K, out]

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
        elif residual is not None and self.b is None:
            return residual.addmm_(x, self.wt)  # the residual add inside the GEMM
        else:
            y = torch.mm(x, self.wt) if self.b is None else torch.addmm(self.b, x, self.wt)
        return y if residual is None else residual.add_(y)


def _fused(parts: list[tuple[torch.Tensor, torch.Tensor | None]], norm: torch.Tensor | None = None,
           scales: list[float] | None = None) -> _Dense:
    """One _Dense for several projections of the same input, concatenated along the output.

    The RMSNorm weight that precedes them is folded into the columns (W diag(g)); `scales`
    multiplies each part (the attention 1/sqrt(d) goes into W_q: exact for a power of two).
    """
    scales = scales or [1.0] * len(parts)
    scaled = [w * s if s != 1.0 else w for (w, _), s in zip(parts, scales)]
    weight = torch.cat(scaled) if len(parts) > 1 else scaled[0]  # [N, K]
    if norm is not None:
        weight = weight * norm[None, :]
    bias = None
    if any(b is not None for _, b in parts):
        bias = torch.cat([(b if b is not None else w.new_zeros(w.shape[0])) * s for (w, b), s in zip(parts, scales)])
    return _Dense(weight, bias)


def lean_weights(model) -> dict:
    """The tensors `_LeanLlama` needs, read from a Llama/Qwen2/Qwen3 model (raises Unsupported)."""
    base = base_model(model)
    config = base.config
    if config.model_type not in LEAN_MODEL_TYPES:
        raise Unsupported(f"model type {config.model_type}")
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        raise Unsupported("activation / pretraining_tp")
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        raise Unsupported("sliding-window layers")
    if type(base.get_input_embeddings()) is not torch.nn.Embedding:
        raise Unsupported("wrapped embedding")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    scale = head_dim ** -0.5
    layers = []
    for layer in base.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        q_norm = getattr(att, "q_norm", None)  # Qwen3: RMSNorm per head, scale-invariant: scale its weight
        layers.append(dict(
            qkv=_fused([_linear(att.q_proj), _linear(att.k_proj), _linear(att.v_proj)],
                       layer.input_layernorm.weight, [1.0 if q_norm else scale, 1.0, 1.0]),
            q_norm=None if q_norm is None else q_norm.weight * scale,
            k_norm=None if q_norm is None else att.k_norm.weight,
            o=_fused([_linear(att.o_proj)]),
            gate_up=_fused([_linear(mlp.gate_proj), _linear(mlp.up_proj)], layer.post_attention_layernorm.weight),
            down=_fused([_linear(mlp.down_proj)]),
        ))
    return dict(
        layers=layers, embed=base.get_input_embeddings().weight, eps=config.rms_norm_eps,
        lm_head=_fused([_linear(base.lm_head)], base.model.norm.weight), rotary=base.model.rotary_emb,
        n_heads=config.num_attention_heads, n_kv=config.num_key_value_heads, head_dim=head_dim,
    )


def _source_versions(model) -> tuple:
    """(data pointer, version) of every parameter: unchanged tuple = unchanged weights."""
    return tuple((p.data_ptr(), p._version if not p.is_inference() else 0) for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# the lean forward
# ----------------------------------------------------------------------------------------------

def _rms(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) (* weight), in float32; the layers' weights are folded into the next matmul."""
    xf = x.float()
    ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1])  # [..., 1]
    y = (xf * ms.add_(eps).rsqrt_()).to(x.dtype)
    return y if weight is None else y * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """RoPE as HF Llama: x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1) = swap(x) * (-1, 1);
    the sign is in sin_signed. x [..., H, hd]; cos/sin broadcast over the heads."""
    half = x.shape[-1] // 2
    swapped = x.unflatten(-1, (2, half)).flip(-2).flatten(-2)  # (x2, x1)
    return torch.addcmul(x * cos, swapped, sin_signed)


def _signed(sin: torch.Tensor) -> torch.Tensor:
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


@dataclass
class _Rows:
    """The active rows (a prefix of the cache rows), one entry each: tensors [B]."""

    slot: torch.Tensor
    """the prompt slot holding the row's prompt keys/values"""
    member: torch.Tensor
    """the row's place among the rows sharing its slot (0 .. members-1)"""
    plen: torch.Tensor
    """prompt length"""
    glen: torch.Tensor
    """generated tokens already in the cache"""
    last: torch.Tensor
    """the token to feed next (sampled, not yet in the cache)"""

    def select(self, index: torch.Tensor) -> "_Rows":
        return _Rows(*(t.index_select(0, index) for t in (self.slot, self.member, self.plen, self.glen, self.last)))

    def cat(self, other: "_Rows") -> "_Rows":
        return _Rows(*(torch.cat([a, b]) for a, b in zip(
            (self.slot, self.member, self.plen, self.glen, self.last),
            (other.slot, other.member, other.plen, other.glen, other.last))))


class _LeanLlama:
    """Llama-family forward over our own KV cache, with the prompt stored once per group.

    Prompt keys/values live in pk[l], pv[l] [S, H_kv, L_p, hd] (one slot per prompt, however many
    samples share it); generated ones in k[l], v[l] [R, H_kv, L_g, hd] (one per row). A decode step
    attends to both: the shared part with one matmul per slot for all its rows' queries (laid out
    in a [S, H_kv, members, G, hd] grid), so the prompt cache is read once per group, not once
    per sample. Never-written cache columns must be finite (masked weights are 0 and 0 * NaN is
    NaN), hence zeros.
    """

    supports_refill = True

    def __init__(self, weights: dict, rows: int, members: int, prompt_len: int, new_len: int, dtype, device):
        self.w, self.device, self.members = weights, device, members
        nkv, hd, n = weights["n_kv"], weights["head_dim"], len(weights["layers"])
        group = weights["n_heads"] // nkv
        self.pk = [torch.zeros(rows, nkv, prompt_len, hd, dtype=dtype, device=device) for _ in range(n)]
        self.pv = [torch.zeros(rows, nkv, prompt_len, hd, dtype=dtype, device=device) for _ in range(n)]
        self.k = [torch.zeros(rows, nkv, new_len, hd, dtype=dtype, device=device) for _ in range(n)]
        self.v = [torch.zeros(rows, nkv, new_len, hd, dtype=dtype, device=device) for _ in range(n)]
        # flat buffers, viewed per step as [S H_kv M, G hd] and [S H_kv M, G T_p] (contiguous)
        self.q_grid = torch.zeros(rows * nkv * members * group * hd, dtype=dtype, device=device)
        self.p_grid = torch.zeros(rows * nkv * members * group * prompt_len, dtype=dtype, device=device)

    def fits(self, rows: int, members: int, prompt_len: int, new_len: int, dtype) -> bool:
        """Whether this cache can serve a call of that size (slices of it are used)."""
        return (self.k[0].shape[0] >= rows and self.members == members and self.pk[0].shape[2] >= prompt_len
                and self.k[0].shape[2] >= new_len and self.k[0].dtype == dtype)

    @staticmethod
    def cache_bytes(weights: dict, rows: int, prompt_len: int, new_len: int, dtype) -> int:
        per = 2 * len(weights["layers"]) * weights["n_kv"] * weights["head_dim"] * dtype.itemsize
        return per * rows * (prompt_len + new_len)

    def _attention_inputs(self, layer: dict, x: torch.Tensor, cos, sin):
        """x [N, D] -> q [N, H, hd] (already scaled by 1/sqrt(hd)), k, v [N, H_kv, hd]."""
        w = self.w
        hd, nq, nkv = w["head_dim"], w["n_heads"], w["n_kv"]
        qkv = layer["qkv"](_rms(x, w["eps"]))  # [N, (H + 2 H_kv) hd]
        qk, v = qkv.split([(nq + nkv) * hd, nkv * hd], -1)
        qk, v = qk.unflatten(-1, (nq + nkv, hd)), v.unflatten(-1, (nkv, hd))
        if layer["q_norm"] is not None:
            q, k = qk.split([nq, nkv], 1)
            qk = torch.cat([_rms(q, w["eps"], layer["q_norm"]), _rms(k, w["eps"], layer["k_norm"])], 1)
        qk = _rope(qk, cos, sin)  # [N, H + H_kv, hd]
        return qk[:, :nq], qk[:, nq:], v

    def _mlp(self, layer: dict, x: torch.Tensor) -> torch.Tensor:
        gate, up = layer["gate_up"](_rms(x, self.w["eps"])).chunk(2, -1)  # [N, I] each
        return layer["down"](F.silu(gate).mul_(up), residual=x)

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, source: torch.Tensor,
                shared: int = 0) -> torch.Tensor:
        """Run right-padded prompts ids [P, L] once, store their keys/values in `slots` [P]; return
        the next-token logits of each prompt [P, V]. The first `shared` tokens, common to all the
        prompts (a system prompt), are run once and copied. (`source` is for _HFForward.)"""
        if shared:
            self._forward(ids[:1, :shared], 0, slots[:1])
            for cache in (*self.pk, *self.pv):
                cache[slots[1:], :, :shared] = cache[slots[:1], :, :shared]
        x = self._forward(ids[:, shared:], shared, slots)  # [P, L - shared, D]
        last = x[torch.arange(ids.shape[0], device=ids.device), lengths - 1 - shared]  # [P, D]
        return self.w["lm_head"](_rms(last, self.w["eps"])).float()  # [P, V]

    def _forward(self, ids: torch.Tensor, start: int, slots: torch.Tensor) -> torch.Tensor:
        """Tokens ids [P, L] at positions start.. of the prompts in `slots`, whose columns < start
        are already cached: write their keys/values, return the last hidden states [P, L, D]."""
        w = self.w
        P, L = ids.shape
        x = F.embedding(ids, w["embed"]).flatten(0, 1)  # [P L, D]
        cos, sin = w["rotary"](x, torch.arange(start, start + L, device=ids.device).repeat(P))  # [P L, hd]
        cos, sin = cos[:, None], _signed(sin)[:, None]  # broadcast over heads
        cols = torch.arange(start + L, device=ids.device)
        mask = None if start == 0 else cols[None, :] <= start + torch.arange(L, device=ids.device)[:, None]
        for i, layer in enumerate(w["layers"]):
            q, k, v = self._attention_inputs(layer, x, cos, sin)  # [P L, H, hd]
            q, k, v = (t.unflatten(0, (P, L)).transpose(1, 2) for t in (q, k, v))  # [P, H, L, hd]
            self.pk[i][slots, :, start: start + L] = k
            self.pv[i][slots, :, start: start + L] = v
            if start:
                k, v = self.pk[i][slots, :, : start + L], self.pv[i][slots, :, : start + L]
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                 enable_gqa=True, scale=1.0)  # [P, H, L, hd]
            x = layer["o"](att.transpose(1, 2).flatten(0, 1).flatten(1), residual=x)  # [P L, D]
            x = self._mlp(layer, x)
        return x.unflatten(0, (P, L))

    def decode(self, r: _Rows, n_slots: int) -> torch.Tensor:
        """One step: feed every active row its last token (position plen + glen) -> logits [B, V]."""
        w = self.w
        B, nkv, hd = r.last.shape[0], w["n_kv"], w["head_dim"]
        t_pre, t_gen = int(r.plen.max()), int(r.glen.max()) + 1
        x = F.embedding(r.last, w["embed"])  # [B, D]
        cos, sin = w["rotary"](x, (r.plen + r.glen)[:, None])  # [B, 1, hd]: broadcasts over heads
        sin = _signed(sin)
        cols_p, cols_g = torch.arange(t_pre, device=x.device), torch.arange(t_gen, device=x.device)
        hidden = torch.cat([cols_p[None] >= r.plen[:, None], cols_g[None] > r.glen[:, None]], 1)  # [B, Tp+Tg]
        mask = torch.zeros(B, 1, 1, t_pre + t_gen, device=x.device).masked_fill_(hidden[:, None, None], float("-inf"))
        heads = torch.arange(nkv, device=x.device)
        # flat row indices (one per row and KV head): into the cache viewed as [R H_kv L_g, hd], and
        # into the query grid viewed as [S H_kv M, G hd]
        at = ((torch.arange(B, device=x.device)[:, None] * nkv + heads) * self.k[0].shape[2] + r.glen[:, None]).flatten()
        cell = ((r.slot[:, None] * nkv + heads) * self.members + r.member[:, None]).flatten()  # [B H_kv]
        for i, layer in enumerate(w["layers"]):
            q, k, v = self._attention_inputs(layer, x, cos, sin)  # [B, H, hd], [B, H_kv, hd]
            self.k[i].view(-1, hd).index_copy_(0, at, k.reshape(B * nkv, hd))
            self.v[i].view(-1, hd).index_copy_(0, at, v.reshape(B * nkv, hd))
            att = self._attend(i, q.reshape(B, nkv, -1, hd), cell, n_slots, t_pre, t_gen, mask)  # [B, H_kv, G, hd]
            x = layer["o"](att.view(B, -1), residual=x)  # [B, D]
            x = self._mlp(layer, x)
        return w["lm_head"](_rms(x, w["eps"])).float()  # [B, V]

    def _attend(self, i: int, q: torch.Tensor, cell: torch.Tensor, n_slots: int, t_pre: int, t_gen: int,
                mask: torch.Tensor) -> torch.Tensor:
        """softmax(q K^T + mask) V over [prompt | generated] keys; q [B, H_kv, G, hd] -> [B, H_kv, G, hd].

        The prompt part runs per slot: the queries of a slot's rows sit in the grid [S, H_kv, M, G, hd]
        at (slot, head, member) = flat `cell` [B H_kv] (stale entries of finished rows compute rows
        nobody reads).
        """
        S, M = n_slots, self.members
        B, nkv, group, hd = q.shape
        grid = self.q_grid[: S * nkv * M * group * hd].view(S * nkv * M, group * hd)
        grid.index_copy_(0, cell, q.reshape(B * nkv, group * hd))
        keys = self.pk[i][:S, :, :t_pre].transpose(-1, -2)  # [S, H_kv, hd, Tp]
        s_pre = torch.matmul(grid.view(S, nkv, M * group, hd), keys)  # [S, H_kv, M G, Tp]
        s_pre = s_pre.view(S * nkv * M, group * t_pre).index_select(0, cell)  # [B H_kv, G Tp]
        s_gen = torch.matmul(q, self.k[i][:B, :, :t_gen].transpose(-1, -2))  # [B, H_kv, G, Tg]
        scores = torch.cat([s_pre.view(B, nkv, group, t_pre), s_gen], -1).add_(mask)  # [B, H_kv, G, Tp+Tg]
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
        p_grid = self.p_grid[: S * nkv * M * group * t_pre].view(S * nkv * M, group * t_pre)
        p_grid.index_copy_(0, cell, probs[..., :t_pre].reshape(B * nkv, group * t_pre))
        o_pre = torch.matmul(p_grid.view(S, nkv, M * group, t_pre), self.pv[i][:S, :, :t_pre])  # [S, H_kv, M G, hd]
        o_pre = o_pre.view(S * nkv * M, group * hd).index_select(0, cell).view(B, nkv, group, hd)
        return torch.matmul(probs[..., t_pre:], self.v[i][:B, :, :t_gen]).add_(o_pre)

    def retain(self, order: torch.Tensor, r: _Rows) -> None:
        """Keep the rows `order` [n] (new row i = old row order[i]), copying only the rows that move:
        a live row from the end fills a finished row's place. The prompt slots do not move."""
        dst = (order != torch.arange(order.shape[0], device=order.device)).nonzero()[:, 0]  # [m]
        if dst.numel():
            src, t_gen = order[dst], int(r.glen.max())
            for cache in (*self.k, *self.v):
                cache[dst, :, :t_gen] = cache[src, :, :t_gen]


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

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, source: torch.Tensor,
                shared: int = 0) -> torch.Tensor:
        """Prompts ids [P, L] (right-padded) -> logits [P, V]; the cache gets one row per source [m]."""
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

    def decode(self, r: _Rows, n_slots: int) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(r.last.shape[0], 1)], 1)  # [B, T + 1]
        out = self.model(input_ids=r.last[:, None], attention_mask=self.mask,
                         position_ids=(r.plen + r.glen)[:, None], past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()  # [B, V]

    def retain(self, order: torch.Tensor, r: _Rows) -> None:
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


class _threads:
    """torch.set_num_threads(n) inside the block (n None: unchanged)."""

    def __init__(self, n: int | None):
        self.n, self.old = n, None

    def __enter__(self):
        if self.n:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)


class FastSampler:
    """Our decode loop (see the module docstring); implements `rlvr.sampling.base.Sampler`.

    model: a causal LM (a peft `PeftModel` too: the active LoRA deltas are merged into a private
    copy of the affected weights once per call, or once while the weights do not change).
    max_batch_size: the most sequences decoded at once; more wait and fill slots as rows finish.
    max_cache_bytes: cap on the KV cache; lowers the batch size for long generations.
    lean: False forces the generic HF-forward path (for tests and comparison).
    compile: torch.compile the lean decode step (measured not to pay off on a 2-core CPU).
    num_threads: torch threads while generating (restored afterwards); None leaves torch's setting.
    When other processes share the cores, 1 thread can be several times faster than 2 (each of
    the ~800 parallel ops of a decode step waits for a descheduled thread); so can
    OMP_WAIT_POLICY=PASSIVE in the environment before torch is imported.
    """

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = 64, max_cache_bytes: float = 4e9,
                 lean: bool = True, compile: bool = False, num_threads: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_cache_bytes = max_cache_bytes
        self.lean = lean
        self.compile = compile
        self.num_threads = num_threads
        self.path = ""
        """the forward used by the last call: "lean" or "hf" (the generic HF-forward fallback)"""
        self.unsupported: str | None = None
        """why the lean forward cannot run this model (None: it can)"""
        self._weights: tuple | None = None  # (versions, weights)
        self._cached_engine: _LeanLlama | None = None
        self._stops: dict = {}

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *, num_samples: int = 1,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        prompts = [[int(t) for t in p] for p in prompts]
        if any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        n_seq = len(prompts) * num_samples
        if n_seq == 0 or params.max_new_tokens <= 0:
            return [Completion(i // num_samples, [], [], "length") for i in range(n_seq)]
        with torch.inference_mode(), _eval_mode(self.model), _threads(self.num_threads):
            engine, rows = self._engine(prompts, params, num_samples)
            run = _Run(engine, rows, prompts, num_samples, params, self._stop_strings(params),
                       generator, progress)
            return run.run()

    def _engine(self, prompts, params: SamplingParams, num_samples: int):
        """The lean engine when the model allows it, else the HF forward; and the batch size."""
        device = next(self.model.parameters()).device
        n_seq = len(prompts) * num_samples
        weights = self._lean_weights() if self.lean else None
        self.path = "hf" if weights is None else "lean"
        if weights is None:
            return _HFForward(self.model), min(n_seq, self.max_batch_size)
        dtype, prompt_len = weights["embed"].dtype, max(len(p) for p in prompts)
        per_row = _LeanLlama.cache_bytes(weights, 1, prompt_len, params.max_new_tokens, dtype)
        rows = max(1, min(n_seq, self.max_batch_size, int(self.max_cache_bytes // per_row)))
        members = min(num_samples, rows)
        engine = self._cached_engine
        if engine is None or not engine.fits(rows, members, prompt_len, params.max_new_tokens, dtype):
            self._cached_engine = None  # free the old cache before allocating the new one
            engine = _LeanLlama(weights, rows, members, prompt_len, params.max_new_tokens, dtype, device)
            if self.compile:
                engine.decode = torch.compile(engine.decode, dynamic=True)
            self._cached_engine = engine
        engine.w = weights
        return engine, rows

    def sync_weights(self, model=None) -> None:
        """The weights changed (an optimizer step): derive the fused copies again on the next call.

        `model`: the policy, if it is another object than the one given at construction. The
        copies are also re-derived whenever a source tensor's version counter moves, so this is a
        memory release as much as a correctness step (the old copies are not kept beside the new).
        """
        if model is not None:
            self.model = model
        self._weights = None

    def release(self) -> None:
        """Free everything kept between calls: the fused weight copies and the KV cache (~1 GB for
        the 135M model at batch 64). The trainer calls it before each update, whose activations set
        a run's peak, and FSDP after its weights were resharded behind autograd's back."""
        self._weights = None
        self._cached_engine = None

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
        return cached_stop_strings(self._stops, self.model, self.tokenizer, params)


def _uniforms(generator, n_prompts: int, group: int, steps: int) -> torch.Tensor:
    """The uniforms of a call [n_prompts * group, steps], float64, prompt-major.

    `generator` is one torch.Generator for the whole call, or a list with one per prompt: then a
    prompt's completions do not depend on which other prompts share the call, which is what lets
    data-parallel processes split a step's prompts and still sample what one process would.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != n_prompts:
            raise ValueError(f"{len(generator)} generators for {n_prompts} prompts: give one per prompt")
        return torch.cat([torch.rand(group, steps, generator=g, dtype=torch.float64) for g in generator])
    return torch.rand(n_prompts * group, steps, generator=generator, dtype=torch.float64)


class _Run:
    """One `generate` call: the waiting sequences, the active rows (a prefix of the cache), the outputs.

    Sequence s = prompt (s // G), sample (s % G). Its t-th token uses the uniform u[s, t], drawn
    up front from the generator, so a sequence's randomness does not depend on the batching.
    A prompt slot is taken (lowest free first) when a prompt is prefilled and freed when the last
    of its rows finishes.
    """

    def __init__(self, engine, rows: int, prompts: list[list[int]], group: int, params: SamplingParams,
                 stops: StopStrings | None, generator: torch.Generator | None, progress):
        self.engine, self.rows, self.prompts, self.group, self.params = engine, rows, prompts, group, params
        self.stops, self.stop_ids, self.progress = stops, set(params.stop_token_ids), progress
        n_seq = len(prompts) * group
        self.device = engine.device
        self.u = None
        if params.temperature > 0:
            self.u = _uniforms(generator, len(prompts), group, params.max_new_tokens)  # [n_seq, T]
        self.tokens: list[list[int]] = [[] for _ in range(n_seq)]
        self.logprobs: list[list[float]] = [[] for _ in range(n_seq)]
        self.finish: list[str] = ["length"] * n_seq
        self.pending = deque(range(n_seq))
        self.seq: list[int] = []  # the sequence in each active row
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        self.r = _Rows(empty, empty, empty, empty, empty)
        self.free_slots = list(range(rows))  # a heap
        self.slot_live = [0] * rows

    def run(self) -> list[Completion]:
        while self.pending or self.seq:
            if self.pending and len(self.seq) < self.rows and (self.engine.supports_refill or not self.seq):
                self._admit()
            if self.seq:
                self._step()
        return [Completion(s // self.group, self.tokens[s], self.logprobs[s], self.finish[s])
                for s in range(len(self.tokens))]

    def _admit(self) -> None:
        """Prefill the prompts of the next waiting sequences, each distinct prompt once into a slot."""
        new = [self.pending.popleft() for _ in range(min(self.rows - len(self.seq), len(self.pending)))]
        uniq = list(dict.fromkeys(s // self.group for s in new))
        slot_of = {p: heapq.heappop(self.free_slots) for p in uniq}
        where = {p: i for i, p in enumerate(uniq)}
        lengths = torch.tensor([len(self.prompts[p]) for p in uniq], device=self.device)  # [P]
        ids = torch.zeros(len(uniq), int(lengths.max()), dtype=torch.long, device=self.device)  # [P, L]
        for i, p in enumerate(uniq):
            ids[i, : len(self.prompts[p])] = torch.tensor(self.prompts[p])
        members = []
        for s in new:
            members.append(self.slot_live[slot_of[s // self.group]])
            self.slot_live[slot_of[s // self.group]] += 1
        source = torch.tensor([where[s // self.group] for s in new], device=self.device)  # [m]
        slots = torch.tensor([slot_of[p] for p in uniq], device=self.device)  # [P]
        shared = 0
        if self.engine.supports_refill and len(uniq) > 1:  # a system prompt common to all: run it once
            shared = len(os.path.commonprefix([self.prompts[p] for p in uniq]))
            shared = min(shared, int(lengths.min()) - 1) if shared >= 16 else 0
        logits = self.engine.prefill(ids, lengths, slots, source, shared)  # [P, V]
        first = len(self.seq)
        self.seq += new
        self.r = self.r.cat(_Rows(slots[source], torch.tensor(members, device=self.device), lengths[source],
                                  torch.zeros_like(source), torch.zeros_like(source)))
        self._sample(logits.index_select(0, source), range(first, first + len(new)))

    def _step(self) -> None:
        """Feed every active row its last token, sample the next."""
        logits = self.engine.decode(self.r, int(self.r.slot.max()) + 1)  # [B, V]
        self.r.glen += 1
        self._sample(logits, range(len(self.seq)))

    def _sample(self, logits: torch.Tensor, rows: range) -> None:
        """Sample for `rows` (their logits [m, V]), record the tokens, retire finished rows."""
        p, seqs = self.params, self.seq[rows.start: rows.stop]
        u = None
        if self.u is not None:
            steps = torch.tensor([len(self.tokens[s]) for s in seqs])
            u = self.u[torch.tensor(seqs), steps].to(self.device)  # [m]
        tokens, logprobs = sample_tokens(logits, u, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
        self.r.last[rows.start: rows.stop] = tokens
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
        """Drop finished rows: live rows from the end of the batch move into their places."""
        n, finished = len(self.seq), set(done)
        for row, slot in zip(done, self.r.slot[done].tolist()):
            self.slot_live[slot] -= 1
            if self.slot_live[slot] == 0:
                heapq.heappush(self.free_slots, slot)
        n_new = n - len(finished)
        holes = [r for r in sorted(finished) if r < n_new]
        movers = [r for r in range(n_new, n) if r not in finished]
        order = list(range(n_new))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        order_t = torch.tensor(order, dtype=torch.long, device=self.device)
        if n_new:
            self.engine.retain(order_t, self.r)
        self.seq = [self.seq[o] for o in order]
        self.r = self.r.select(order_t)
