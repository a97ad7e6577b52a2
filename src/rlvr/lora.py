"""A LoRA linear layer in one autograd node: y = x W^T + b + s (x A^T) B^T.

peft's `lora.Linear` computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: five autograd nodes,
and three [N, out] temporaries in the forward (the LoRA product, its scaled copy, the sum) and more
in the backward (the scaled gradient, the two input gradients and their sum). Their values are
right; their cost is memory traffic. On a CPU every one of those tensors is fresh memory (rlvr
serves large blocks by mmap, `models.limit_heap_fragmentation`), so each costs page faults as well.

`LoRALinearFunction` does the same arithmetic with one output buffer:

    forward    h  = x A^T                       [N, r]
               y  = x W^T + b,  y += h (s B)^T    (addmm_, in place)
    backward   gh = g (s B)                     [N, r]
               dx = g W,        dx += gh A        (addmm_, in place; only if x needs a gradient)
               dA = gh^T x                      [r, in]
               dB = s g^T h                     [out, r]

The frozen W gets no gradient (LoRA trains A and B only; the fused path is taken only then).
Measured on one update of the 135M model, 32 x (64 + 64) tokens, prompts shared, rlvr's allocator
setting (`bench/bench_update.py --rounds 2 --variants lean+share+mmap,lean+share+mmap+peft`, record
bench/results/update_fused_lora.json): 14.7 s fused against 18.7 s with peft's forward (best of 2),
3.7 M page faults against 5.4 M, peak 4.53 against 4.60 GB.

`fuse_lora(model)` switches peft's LoRA linears to `FusedLoraLinear`, a subclass whose forward
takes this path when the layer is plain LoRA (one active adapter, no dropout, no DoRA or other
variant, no LoRA bias, not merged, adapters enabled, no autocast, one dtype) and otherwise calls
peft's own forward. Saving, merging and unloading are peft's, unchanged.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear
from torch import Tensor


class LoRALinearFunction(torch.autograd.Function):
    """y = x W^T + b + scale * (x A^T) B^T with gradients for x, A and B (W and b frozen)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor, lora_b: Tensor,
                scale: float) -> Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        h = x2 @ lora_a.t()  # [N, r]
        b_scaled = lora_b * scale  # [out, r]
        y = torch.nn.functional.linear(x2, weight, bias)  # [N, out]
        y.addmm_(h, b_scaled.t())
        ctx.save_for_backward(x2, weight, lora_a, b_scaled, h)
        ctx.scale = scale
        ctx.x_shape = x.shape
        return y.view(*shape, y.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, weight, lora_a, b_scaled, h = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # [N, out]
        gh = g @ b_scaled  # [N, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = (g @ weight).addmm_(gh, lora_a).view(ctx.x_shape)  # [..., in]
        if ctx.needs_input_grad[3]:
            da = gh.t() @ x2  # [r, in]
        if ctx.needs_input_grad[4]:
            db = (g.t() @ h).mul_(ctx.scale)  # [out, r]
        return dx, None, None, da, db, None


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
