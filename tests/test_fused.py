"""The fused layers (rlvr.fused): a hand-computed example, then the same values and gradients as
peft's own LoRA forward on tiny Llama, Qwen2 and Qwen3 models, and peft's forward wherever the layer is not
plain LoRA."""

import copy

import pytest
import torch

from rlvr.fused import (
    FusedLoraLinear,
    GatedMLPFunction,
    LoRALinearFunction,
    RMSNormFunction,
    fuse,
    fuse_lora,
)
from rlvr.models import attach_lora, tiny_random_model
from rlvr.policy import completion_logprobs


def test_hand_computed_example():
    # y = x W^T + b + s (x A^T) B^T with x = [1, 2], W = [[1, 0], [0, 1]], b = [0.5, -0.5],
    # A = [[1, 1]], B = [[1], [2]], s = 2:  x A^T = 3,  y = [1, 2] + [0.5, -0.5] + 2 * 3 * [1, 2] = [7.5, 13.5]
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    w, b = torch.eye(2), torch.tensor([0.5, -0.5])
    a = torch.tensor([[1.0, 1.0]], requires_grad=True)
    bb = torch.tensor([[1.0], [2.0]], requires_grad=True)
    y = LoRALinearFunction.apply(x, w, b, a, bb, 2.0)
    assert y.tolist() == [[7.5, 13.5]]
    # upstream gradient g = [1, 1]:  g (s B) = 2 * (1 + 2) = 6
    # dx = g W + 6 A = [1, 1] + [6, 6];  dA = 6 x = [6, 12];  dB = s g^T (x A^T) = 2 * 3 * [1, 1]^T
    y.backward(torch.ones(1, 2))
    assert x.grad.tolist() == [[7.0, 7.0]]
    assert a.grad.tolist() == [[6.0, 12.0]]
    assert bb.grad.tolist() == [[6.0], [6.0]]


def test_gradcheck_in_double():
    """Both functions' backward against finite differences (float64), every input needing a gradient."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x, w, b, a, bb = t(2, 3, 5), t(4, 5), t(4), t(2, 5), t(4, 2)
    w.requires_grad_(False), b.requires_grad_(False)  # frozen base
    assert torch.autograd.gradcheck(lambda x, a, bb: LoRALinearFunction.apply(x, w, b, a, bb, 1.5), (x, a, bb))
    hidden, inter, r = 5, 6, 2
    frozen = [t(inter, hidden).requires_grad_(False), None, t(inter, hidden).requires_grad_(False), None,
              t(hidden, inter).requires_grad_(False), t(hidden).requires_grad_(False)]
    lora = [t(r, hidden), t(inter, r), t(r, hidden), t(inter, r), t(r, inter), t(hidden, r)]

    def mlp(x, *lora):
        args = [v for k in range(3) for v in (frozen[2 * k], frozen[2 * k + 1], lora[2 * k], lora[2 * k + 1])]
        return GatedMLPFunction.apply(x, *args, 2.0, 0.5, 3.0)

    assert torch.autograd.gradcheck(mlp, (t(2, 3, hidden), *lora))


def test_rms_norm_hand_computed_and_gradcheck():
    # x = [3, 4]: mean(x^2) = 12.5, eps = 0: r = 1 / sqrt(12.5); w = [1, 2]: y = [3 r, 8 r]
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    y = RMSNormFunction.apply(x, w, 0.0)
    r = 12.5 ** -0.5
    torch.testing.assert_close(y, torch.tensor([[3 * r, 8 * r]]))
    # g = [1, 0]: gw = [1, 0], mean(gw x) = 1.5, dx = r ([1, 0] - [3, 4] r^2 1.5) = r [1 - 0.36, -0.48]
    y.backward(torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(x.grad, torch.tensor([[0.64 * r, -0.48 * r]]))
    torch.testing.assert_close(w.grad, torch.tensor([3 * r, 0.0]))  # dw = g x r
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-6), (xs, ws))


def test_full_fine_tuning_norms_match(tokenizer):
    """Without LoRA only the norms are fused; every weight's gradient (the norms' too) is unchanged."""
    from rlvr.config import ModelConfig
    from rlvr.models import prepare_policy

    base = tiny_random_model(seed=0, tokenizer=tokenizer)[0]
    plain = prepare_policy(copy.deepcopy(base), ModelConfig(use_peft=False, fused_layers=False))
    fused = prepare_policy(base, ModelConfig(use_peft=False))
    ids = torch.randint(3, 5000, (2, 9), generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (fused, plain):
        loss = completion_logprobs(model, ids, torch.ones_like(ids), 4).sum()
        grads.append(dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters())))))
    assert any("norm" in n for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def _with_lora(model, fused: bool, seed: int = 1):
    model = attach_lora(model, r=4, alpha=8, fused=fused)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # LoRA B starts at 0: give it values so A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _qwen(tokenizer, version: int):
    import transformers

    common = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}
    torch.manual_seed(0)
    if version == 3:  # q_norm and k_norm: two more RMSNorms per layer
        return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common)).float().eval()
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).float().eval()
    with torch.no_grad():  # non-zero q/k/v biases, so the bias path counts
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_random_model(seed=0)[1]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_matches_peft_values_and_gradients(tokenizer, arch, checkpointing):
    base = tiny_random_model(seed=0, tokenizer=tokenizer)[0] if arch == "llama" else _qwen(tokenizer, int(arch[-1]))
    plain = _with_lora(base, False)
    fused = copy.deepcopy(plain)  # the same LoRA weights
    assert fuse(fused) == {"lora": 2 * 7, "mlp": 2, "norm": 2 * 2 + 1 + (2 * 2 if arch == "qwen3" else 0)}
    assert sum(type(m) is FusedLoraLinear for m in fused.modules()) == 2 * 7
    assert not any(type(m) is FusedLoraLinear for m in plain.modules())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 5000, (3, 12), generator=g)  # [N, T]
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    results = []
    for model in (fused, plain):
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        logp = completion_logprobs(model, ids, mask, 5)  # [N, 5]
        loss = (logp * torch.linspace(-1, 1, 5)).sum()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        results.append((logp.detach(), dict(zip(names, grads))))
    (lp_f, gr_f), (lp_p, gr_p) = results
    torch.testing.assert_close(lp_f, lp_p, atol=1e-5, rtol=0)
    assert gr_f.keys() == gr_p.keys() and len(gr_f) == 2 * 2 * 7
    for name in gr_f:
        assert gr_p[name].abs().sum() > 0, name
        torch.testing.assert_close(gr_f[name], gr_p[name], atol=1e-5, rtol=1e-4, msg=name)


def test_not_plain_lora_takes_peft_forward(tokenizer):
    model = _with_lora(tiny_random_model(seed=0, tokenizer=tokenizer)[0], True)
    base = tiny_random_model(seed=0, tokenizer=tokenizer)[0]
    ids = torch.randint(3, 5000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora_out = model(input_ids=ids).logits
        with model.disable_adapter():  # adapters off: the base model's output exactly
            torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)
        assert (lora_out - base(input_ids=ids).logits).abs().max() > 1e-3
    layer = next(m for m in model.modules() if type(m) is FusedLoraLinear)
    calls = []
    original = LoRALinearFunction.apply
    LoRALinearFunction.apply = lambda *a: calls.append(1) or original(*a)
    try:
        x = torch.randn(2, layer.in_features)
        layer(x)
        assert calls == [1]
        layer.lora_dropout["default"] = torch.nn.Dropout(0.5)  # dropout: peft's forward
        layer(x)
        layer.lora_dropout["default"] = torch.nn.Identity()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: peft's forward
            layer(x)
        layer.merge()  # merged: peft's forward (the base layer)
        merged = layer(x)
        layer.unmerge()
        torch.testing.assert_close(layer(x), merged, atol=1e-5, rtol=0)
        assert calls == [1, 1]
    finally:
        LoRALinearFunction.apply = original


def test_fused_model_saves_and_merges_like_peft(tokenizer, tmp_path):
    from peft import get_peft_model_state_dict

    base = tiny_random_model(seed=0, tokenizer=tokenizer)[0]
    fused, plain = _with_lora(copy.deepcopy(base), True), _with_lora(base, False)  # LoRA A: two draws
    a, b = get_peft_model_state_dict(fused), get_peft_model_state_dict(plain)
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    fused.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    ids = torch.randint(3, 5000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = fused(input_ids=ids).logits
        merged = fused.merge_and_unload()
        after = merged(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert fuse_lora(merged) == 0  # merged and unloaded: no LoRA layer left
