"""Selective log-softmax, entropy and the chunked (checkpointed) log-probs, by hand and against
the textbook full log-softmax."""

import math

import pytest
import torch

from rlvr.algorithms.logprobs import (
    chunked_head_logprobs,
    chunked_token_logprobs,
    entropy_from_logits,
    selective_log_softmax,
)


def test_selective_log_softmax_by_hand():
    # logits (0, ln 3) -> softmax (1/4, 3/4); log p(1) = ln 0.75, log p(0) = ln 0.25
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    out = selective_log_softmax(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(out, torch.tensor([math.log(0.75), math.log(0.25)]))


def test_selective_log_softmax_applies_temperature():
    # T = 0.5: z = (0, 2 ln 3) -> softmax (1/10, 9/10); log p(1) = ln 0.9
    logits = torch.tensor([0.0, math.log(3.0)])
    out = selective_log_softmax(logits, torch.tensor(1), temperature=0.5)
    assert out.item() == pytest.approx(math.log(0.9), abs=1e-6)


def test_selective_log_softmax_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g) * 4
    index = torch.randint(0, 50, (3, 5), generator=g)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, index, 0.7), expected)


def test_selective_log_softmax_bf16_is_computed_in_fp32():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.bfloat16)
    out = selective_log_softmax(logits, torch.tensor([1]))
    assert out.dtype == torch.float32


def test_entropy_by_hand():
    # uniform over 4 -> ln 4; (1/4, 3/4) -> -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, math.log(3.0), -1e9, -1e9]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(4.0), 0.562335]))


def _reference(hidden, weight, bias, targets, temperature):
    logits = hidden @ weight.T + (0 if bias is None else bias)  # [N, T, V]
    return torch.log_softmax(logits / temperature, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
def test_chunked_matches_full_log_softmax_values_and_gradients(chunk_size):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 5, 8, generator=g, requires_grad=True)  # [N, T, H]
    weight = torch.randn(40, 8, generator=g, requires_grad=True)  # [V, H]
    bias = torch.randn(40, generator=g, requires_grad=True)  # [V]
    targets = torch.randint(0, 40, (3, 5), generator=g)  # [N, T]
    upstream = torch.randn(3, 5, generator=g)  # an arbitrary d loss / d logp

    expected = _reference(hidden, weight, bias, targets, 0.8)
    grads_expected = torch.autograd.grad((expected * upstream).sum(), [hidden, weight, bias])
    got = chunked_token_logprobs(hidden, weight, targets, temperature=0.8, chunk_size=chunk_size, bias=bias)
    grads_got = torch.autograd.grad((got * upstream).sum(), [hidden, weight, bias])

    torch.testing.assert_close(got, expected)
    for a, b in zip(grads_got, grads_expected):
        torch.testing.assert_close(a, b)


def test_frozen_head_gradient_by_hand():
    # H = 1, V = 2: W = [[0], [ln 3]], h = 1: z = (0, ln 3), p = (1/4, 3/4); target 1:
    # logp = ln 0.75, d logp / dh = W^T (e_1 - p) = 0 * (-1/4) + ln 3 * (1/4)
    hidden = torch.ones(1, 1, 1, requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3.0)]])  # frozen
    logp = chunked_token_logprobs(hidden, weight, torch.tensor([[1]]))
    assert type(logp.grad_fn.next_functions[0][0]).__name__.startswith("FrozenHeadLogProbs")
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    (grad,) = torch.autograd.grad(logp.sum(), hidden)
    assert grad.item() == pytest.approx(math.log(3.0) / 4, abs=1e-6)


@pytest.mark.parametrize("chunk_size,temperature", [(1, 1.0), (4, 0.8), (7, 1.3), (1000, 1.0)])
def test_frozen_head_matches_full_log_softmax_values_gradients_and_entropy(chunk_size, temperature):
    """With a frozen head the gradient is taken in the forward (FrozenHeadLogProbs): same numbers."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 5, 8, generator=g, requires_grad=True)  # [N, T, H]
    weight, bias = torch.randn(40, 8, generator=g), torch.randn(40, generator=g)  # frozen
    targets = torch.randint(0, 40, (3, 5), generator=g)  # [N, T]
    upstream = torch.randn(3, 5, generator=g)
    expected = _reference(hidden, weight, bias, targets, temperature)
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), hidden)
    got, entropy = chunked_token_logprobs(hidden, weight, targets, temperature=temperature, chunk_size=chunk_size,
                                          bias=bias, with_entropy=True)
    (grad_got,) = torch.autograd.grad((got * upstream).sum(), hidden)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad_got, grad_expected)
    assert not entropy.requires_grad
    torch.testing.assert_close(entropy, entropy_from_logits(hidden.detach() @ weight.T + bias, temperature))


def test_chunked_entropy_has_no_grad_and_matches():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g)
    targets = torch.randint(0, 30, (2, 3), generator=g)
    logp, entropy = chunked_token_logprobs(hidden, weight, targets, chunk_size=4, with_entropy=True, temperature=2.0)
    assert logp.requires_grad and not entropy.requires_grad
    torch.testing.assert_close(entropy, entropy_from_logits(hidden.detach() @ weight.T, temperature=2.0))


def test_chunked_without_grad_does_not_build_a_graph():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g)
    with torch.no_grad():
        logp = chunked_token_logprobs(hidden, weight, torch.zeros(2, 3, dtype=torch.long))
    assert not logp.requires_grad


def test_chunked_head_accepts_any_logits_function():
    # a soft-capped head: logits = 2 * tanh(h W^T / 2)
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g)
    targets = torch.randint(0, 30, (2, 3), generator=g)
    head = lambda h: 2.0 * torch.tanh(h @ weight.T / 2.0)  # noqa: E731
    got = chunked_head_logprobs(hidden, head, targets, chunk_size=2)
    expected = torch.log_softmax(head(hidden), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, expected)
    g1 = torch.autograd.grad(got.sum(), hidden)[0]
    g2 = torch.autograd.grad(expected.sum(), hidden)[0]
    torch.testing.assert_close(g1, g2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logprobs(torch.zeros(1, 1, 2), torch.zeros(3, 2), torch.zeros(1, 1, dtype=torch.long), chunk_size=0)
