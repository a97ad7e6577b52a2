"""The update's layers as single autograd nodes: same values, less memory and memory traffic.

autograd records every elementary op of a layer and keeps what each op's backward needs, so a
layer written as a chain of small ops keeps several copies of its activations and allocates a
fresh tensor per op. On a CPU under glibc, every fresh large tensor is fresh memory from the kernel
(rlvr's fallback allocator serves large blocks by mmap, `allocator.limit_heap_fragmentation`), so
each also costs page faults; under mimalloc it is still memory traffic. Three
functions here do the same arithmetic with one node each, keeping only what the backward needs:

`LoRALinearFunction`, y = x W^T + b + s (x A^T) B^T. peft's `lora.Linear` computes `base(x) +
lora_B(lora_A(dropout(x))) * scaling`: five nodes, three [N, out] temporaries in the forward (the
LoRA product, its scaled copy, the sum) and more in the backward. Here, with one output buffer:

    forward    h  = x A^T                       [N, r]
               y  = x W^T + b,  y += h (s B)^T    (addmm_, in place)
    backward   gh = g (s B)                     [N, r]
               dx = g W,        dx += gh A        (addmm_, in place; only if x needs a gradient)
               dA = gh^T x                      [r, in]
               dB = s g^T h                     [out, r]

The frozen W gets no gradient (LoRA trains A and B only; the fused path is taken only then).

`GatedMLPFunction`, a Llama-style MLP down(silu(gate(x)) * up(x)) whose three projections are
LoRA linears: one node that recomputes silu(g) * u in the backward pass instead of keeping it
(autograd keeps silu(g) for the product's gradient and the product for down's LoRA A).

`RMSNormFunction`, y = w x / sqrt(mean(x^2) + eps): keeps x and the [N, 1] inverse norm, where
autograd keeps x, x / rms and the temporaries of five ops.

Measured on one update of the 135M model, 32 x (64 + 64) tokens, prompts shared, rlvr's allocator
setting (`bench/bench_update.py --rounds 2 --variants lean+share+mmap,lean+share+mmap+mlp,
lean+share+mmap+linear,lean+share+mmap+peft`, record bench/results/update_fused.json, best of 2):

    peft's layers                       16.5 s   4.62 GB peak   32.7 CPU s
    + fused LoRA linears                15.5 s   4.54 GB        30.5
    + fused gated MLPs                  14.8 s   3.74 GB        29.3
    + fused RMSNorms (all: the default) 13.2 s   3.69 GB        26.3

`fuse(model)` installs them, in place: peft's LoRA linears become `FusedLoraLinear`, a subclass
whose forward takes the fused path when the layer is plain LoRA (one active adapter, no dropout,
no DoRA or other variant, no LoRA bias, not merged, adapters enabled, no autocast, one dtype);
Llama, Mistral, Qwen2 and Qwen3 MLPs and RMSNorms get a forward that takes it when it applies
(checked at each call: after `merge_and_unload` an MLP is no longer LoRA) and calls the class's
own forward otherwise. On the fused MLP path the three projection modules are not called, so
forward hooks registered on them do not run (model.fused_layers: false keeps them). Saving, merging
and unloading are peft's, unchanged. `models.attach_lora` applies all three; `trainer.prepare_policy`
the norms under full fine-tuning (config: model.fused_layers).
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear
from torch import Tensor
from transformers.activations import SiLUActivation


def _lora_forward(x2: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor, b_scaled: Tensor):
    """y = x W^T + b + h (s B)^T and h = x A^T, for 2-D x: ([N, out], [N, r])."""
    h = x2 @ lora_a.t()  # [N, r]
    y = torch.nn.functional.linear(x2, weight, bias)  # [N, out]
    return y.addmm_(h, b_scaled.t()), h


def _lora_grads(g: Tensor, x2: Tensor, h: Tensor, lora_a: Tensor, b_scaled: Tensor, scale: float, need_a: bool,
                need_b: bool):
    """(g (s B) [N, r], dA [r, in] or None, dB [out, r] or None) for upstream gradient g [N, out]."""
    gh = g @ b_scaled  # [N, r]
    da = gh.t() @ x2 if need_a else None
    db = (g.t() @ h).mul_(scale) if need_b else None
    return gh, da, db


class LoRALinearFunction(torch.autograd.Function):
    """y = x W^T + b + scale * (x A^T) B^T with gradients for x, A and B (W and b frozen)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor, lora_b: Tensor,
                scale: float) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        b_scaled = lora_b * scale  # [out, r]
        y, h = _lora_forward(x2, weight, bias, lora_a, b_scaled)
        ctx.save_for_backward(x2, weight, lora_a, b_scaled, h)
        ctx.scale = scale
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, weight, lora_a, b_scaled, h = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # [N, out]
        gh, da, db = _lora_grads(g, x2, h, lora_a, b_scaled, ctx.scale, *ctx.needs_input_grad[3:5])
        dx = (g @ weight).addmm_(gh, lora_a).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        return dx, None, None, da, db, None


class GatedMLPFunction(torch.autograd.Function):
    """y = down(silu(gate(x)) * up(x)), each projection a LoRA linear (`LoRALinearFunction`'s
    arithmetic), saving x, gate(x) and up(x) only: the product p = silu(g) * u, which autograd
    would keep twice over (silu(g) for the product's gradient, p for down's LoRA A), is recomputed
    in the backward pass. Per token and layer that is 2 x intermediate_size floats fewer (12 KB for
    SmolLM2-135M, of the ~40 KB its layer kept with peft's layers).

    Arguments: x, then (weight, bias, A, B) of gate, up and down, then their three scales."""

    @staticmethod
    def forward(ctx, x, wg, bg, ag, lbg, wu, bu, au, lbu, wd, bd, ad, lbd, sg, su, sd):
        x2 = x.reshape(-1, x.shape[-1])  # [N, H]
        bgs, bus, bds = lbg * sg, lbu * su, lbd * sd  # scaled B's: [I, r], [I, r], [H, r]
        g, hg = _lora_forward(x2, wg, bg, ag, bgs)  # [N, I], [N, r]
        u, hu = _lora_forward(x2, wu, bu, au, bus)  # [N, I], [N, r]
        p = torch.nn.functional.silu(g).mul_(u)  # [N, I]
        y, hd = _lora_forward(p, wd, bd, ad, bds)  # [N, H], [N, r]
        ctx.save_for_backward(x2, g, u, hg, hu, hd, wg, ag, bgs, wu, au, bus, wd, ad, bds)
        ctx.scales = (sg, su, sd)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, g, u, hg, hu, hd, wg, ag, bgs, wu, au, bus, wd, ad, bds = ctx.saved_tensors
        sg, su, sd = ctx.scales
        need = ctx.needs_input_grad
        dy = grad.reshape(-1, grad.shape[-1])  # [N, H]
        act = torch.nn.functional.silu(g)  # [N, I], recomputed
        ghd, dad, dbd = _lora_grads(dy, act * u, hd, ad, bds, sd, need[11], need[12])  # p = act * u, recomputed
        dp = (dy @ wd).addmm_(ghd, ad)  # [N, I]
        du = dp * act  # [N, I]
        del act
        dg = torch.ops.aten.silu_backward(dp.mul_(u), g)  # [N, I]: dp * u * silu'(g)
        del dp
        ghg, dag, dbg = _lora_grads(dg, x2, hg, ag, bgs, sg, need[3], need[4])
        ghu, dau, dbu = _lora_grads(du, x2, hu, au, bus, su, need[7], need[8])
        dx = None
        if need[0]:
            dx = (dg @ wg).addmm_(ghg, ag).addmm_(du, wu).addmm_(ghu, au).view(ctx.x_shape)  # [..., H]
        return dx, None, None, dag, dbg, None, None, dau, dbu, None, None, dad, dbd, None, None, None


class RMSNormFunction(torch.autograd.Function):
    """y = w * x * r with r = 1 / sqrt(mean(x^2, -1) + eps), in fp32; gradients for x and w.

    With gw = g * w:  dx = r * (gw - x * r^2 * mean(gw * x, -1)),  dw = sum over rows of g * x * r."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # [..., 1]
        ctx.save_for_backward(x, weight, r)
        return (x * r).mul_(weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, r = ctx.saved_tensors
        dx = dw = None
        gw = grad * weight  # [..., H]
        if ctx.needs_input_grad[0]:
            dot = (gw * x).mean(-1, keepdim=True).mul_(r.pow(2))  # [..., 1]
            dx = gw.sub_(x * dot).mul_(r)
        if ctx.needs_input_grad[1]:
            dw = (grad * x * r).reshape(-1, x.shape[-1]).sum(0)  # [H]
        return dx, dw, None


def _plain_lora(layer, x: Tensor, args: tuple, kwargs: dict):
    """(A, B, scale) when `layer` (a peft lora.Linear) is plain LoRA for this call, else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or getattr(layer, "fan_in_fan_out", False):
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    lora_a, lora_b, base = layer.lora_A[name], layer.lora_B[name], layer.base_layer
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity) or lora_b.bias is not None:
        return None
    if type(base) is not torch.nn.Linear or base.weight.requires_grad or (
            base.bias is not None and base.bias.requires_grad):
        return None
    if not (x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype):
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    return lora_a.weight, lora_b.weight, layer.scaling[name]


class FusedLoraLinear(Linear):
    """peft's LoRA linear whose forward is one `LoRALinearFunction` node when the layer is plain LoRA,
    and peft's forward otherwise."""

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        plain = _plain_lora(self, x, args, kwargs)
        if plain is None:
            return super().forward(x, *args, **kwargs)
        lora_a, lora_b, scale = plain
        return LoRALinearFunction.apply(x, self.base_layer.weight, self.base_layer.bias, lora_a, lora_b, scale)


def fuse_lora(model) -> int:
    """Switch every peft `lora.Linear` in `model` to `FusedLoraLinear`, in place; returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = FusedLoraLinear
            n += 1
    return n


_GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}  # forward: down(act(gate(x)) * up(x))
_RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}  # w * x / rms(x), fp32 inside


def _fused_mlp_forward(self, x: Tensor) -> Tensor:
    """A gated MLP's forward through `GatedMLPFunction` when its three projections are plain LoRA
    and its activation is SiLU; otherwise the class's own forward."""
    if isinstance(self.act_fn, (torch.nn.SiLU, SiLUActivation)):
        parts = [_plain_lora(proj, x, (), {}) if type(proj) is FusedLoraLinear else None
                 for proj in (self.gate_proj, self.up_proj, self.down_proj)]
        if all(part is not None for part in parts):
            tensors = [t for proj, (a, b, _) in zip((self.gate_proj, self.up_proj, self.down_proj), parts)
                       for t in (proj.base_layer.weight, proj.base_layer.bias, a, b)]
            return GatedMLPFunction.apply(x, *tensors, *(scale for _, _, scale in parts))
    return type(self).forward(self, x)


def _install_forward(model, class_names: set[str], forward) -> int:
    """Give every module of `model` whose class is named in `class_names` the instance forward
    `forward`, in place (once); returns how many."""
    import types

    n = 0
    for module in model.modules():
        if type(module).__name__ in class_names and "forward" not in vars(module):
            module.forward = types.MethodType(forward, module)
            n += 1
    return n


def fuse_gated_mlps(model) -> int:
    """Give every Llama-style gated MLP in `model` (Llama, Mistral, Qwen2, Qwen3: down(silu(gate(x))
    * up(x))) the `GatedMLPFunction` forward, in place; returns how many. The forward checks at each
    call that the layer is still plain LoRA (after `merge_and_unload` it is not) and falls back."""
    return _install_forward(model, _GATED_MLPS, _fused_mlp_forward)


def _fused_norm_forward(self, x: Tensor) -> Tensor:
    """An RMSNorm's forward through `RMSNormFunction` in fp32 (where the class computes in fp32
    anyway); the class's own forward for other dtypes."""
    if x.dtype == self.weight.dtype == torch.float32:
        return RMSNormFunction.apply(x, self.weight, self.variance_epsilon)
    return type(self).forward(self, x)


def fuse_rms_norms(model) -> int:
    """Give every Llama-style RMSNorm in `model` the `RMSNormFunction` forward, in place; returns how many."""
    return _install_forward(model, _RMS_NORMS, _fused_norm_forward)


def fuse(model) -> dict:
    """All of the above, in place; returns how many layers of each kind were fused."""
    return {"lora": fuse_lora(model), "mlp": fuse_gated_mlps(model), "norm": fuse_rms_norms(model)}


def has_fused_mlps(model) -> bool:
    """True when the model's gated MLPs run through `GatedMLPFunction` (fused, with LoRA projections)."""
    return any(getattr(vars(m).get("forward"), "__func__", None) is _fused_mlp_forward
               and type(getattr(m, "gate_proj", None)) is FusedLoraLinear for m in model.modules())
