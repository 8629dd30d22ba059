"""L1 regression action head (VLA-Adapter style) and the masked L1 loss."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from lavla.model.head_config import L1HeadConfig
from lavla.model.l1_head import L1RegressionHead, masked_l1

B, T, VLM, N, A, P = 3, 20, 24, 4, 5, 6


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast and steadier on a shared machine
    yield
    torch.set_num_threads(threads)


def _cfg(**kw) -> L1HeadConfig:
    base = dict(num_blocks=2, dim=16, heads=2, action_horizon=N, action_dim=A, proprio_dim=P)
    base.update(kw)
    return L1HeadConfig(**base)


def _inputs(q: int, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(B, T, VLM, generator=g).requires_grad_(requires_grad) for _ in range(3)]
    task_mask = torch.zeros(B, T, dtype=torch.bool)
    task_mask[:, :4] = True
    task_mask[1, 3] = False  # ragged prompts
    query_index = (T - q + torch.arange(q))[None].expand(B, -1).clone()
    proprio = torch.randn(B, P, generator=g)
    return layers, task_mask, query_index, proprio


@pytest.mark.parametrize("k", [1, 3])
def test_shapes_for_one_and_several_queries_per_step(k: int) -> None:
    torch.manual_seed(0)
    head = L1RegressionHead(_cfg(), VLM, N * k)
    layers, task_mask, idx, proprio = _inputs(N * k)
    out = head(layers, task_mask, idx, proprio)
    assert out.shape == (B, N, A) and torch.isfinite(out).all()
    # Pre-gathered per-layer query states give the same result as positions.
    gathered = [torch.gather(h, 1, idx[:, :, None].expand(-1, -1, VLM)) for h in layers]
    torch.testing.assert_close(head(layers, task_mask, gathered, proprio), out)


def test_rejects_bad_inputs() -> None:
    head = L1RegressionHead(_cfg(), VLM, N)
    layers, task_mask, idx, proprio = _inputs(N)
    with pytest.raises(ValueError, match="hidden states"):
        head(layers[1:], task_mask, idx, proprio)
    with pytest.raises(ValueError, match="queries"):
        head(layers, task_mask, torch.cat([idx, idx], dim=1), proprio)
    with pytest.raises(ValueError, match="action_horizon"):
        L1RegressionHead(_cfg(), VLM, N + 1)


def test_gate_starts_closed_so_task_tokens_do_not_matter_at_init() -> None:
    torch.manual_seed(0)
    head = L1RegressionHead(_cfg(), VLM, 2 * N)
    layers, task_mask, idx, proprio = _inputs(2 * N)
    out = head(layers, task_mask, idx, proprio)
    # Change only task-token content (queries sit at the end, outside the task mask).
    changed = [h.clone() for h in layers]
    for h in changed:
        h[:, :4] += 5.0 * torch.randn_like(h[:, :4])
    torch.testing.assert_close(head(changed, task_mask, idx, proprio), out)
    # The queries and proprio do matter at init.
    moved = [h.clone() for h in layers]
    for h in moved:  # random, not constant: a constant shift is invisible through LayerNorm
        h[:, -1] += torch.randn_like(h[:, -1])
    assert not torch.allclose(head(moved, task_mask, idx, proprio), out)
    assert not torch.allclose(head(layers, task_mask, idx, proprio + 1.0), out)
    # Once a gate opens, the task tokens flow in.
    with torch.no_grad():
        for block in head.blocks:
            block.gate.fill_(0.5)
    assert not torch.allclose(head(changed, task_mask, idx, proprio), head(layers, task_mask, idx, proprio))


def test_no_task_tokens_is_finite() -> None:
    head = L1RegressionHead(_cfg(), VLM, N)
    with torch.no_grad():
        for block in head.blocks:
            block.gate.fill_(1.0)
    layers, task_mask, idx, proprio = _inputs(N)
    task_mask[0] = False  # a sample with no task token must not produce NaN (all-masked softmax row)
    out = head(layers, task_mask, idx, proprio)
    assert torch.isfinite(out).all()


def test_gradients_reach_head_and_vlm_states() -> None:
    torch.manual_seed(0)
    head = L1RegressionHead(_cfg(), VLM, N)
    layers, task_mask, idx, proprio = _inputs(N, requires_grad=True)
    target = torch.randn(B, N, A)
    masked_l1(head(layers, task_mask, idx, proprio), target, torch.ones(B, N, A, dtype=torch.bool)).backward()
    closed_branch = {n for n, _ in head.named_parameters() if ".task_attn." in n or ".norm_task" in n}
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        if name not in closed_branch:  # the task branch is multiplied by tanh(0) = 0 at init
            assert p.grad.abs().sum() > 0, name
    for block in head.blocks:
        assert block.gate.grad.abs().item() > 0  # ... but its gate learns to open
    assert layers[0].grad is None or layers[0].grad.abs().sum() == 0  # entry 0 is not read
    for h in layers[1:]:
        assert h.grad.abs().sum() > 0
        assert h.grad[:, :4].abs().sum() == 0  # task tokens: gate closed
        assert h.grad[:, -N:].abs().sum() > 0  # query tokens
    # With the gates open, gradients reach the task branch and the task tokens too.
    with torch.no_grad():
        for block in head.blocks:
            block.gate.fill_(0.5)
    head.zero_grad()
    for h in layers:
        h.grad = None
    masked_l1(head(layers, task_mask, idx, proprio), target, torch.ones(B, N, A, dtype=torch.bool)).backward()
    for name in closed_branch:
        assert dict(head.named_parameters())[name].grad.abs().sum() > 0, name
    assert layers[1].grad[:, :4].abs().sum() > 0
    assert layers[1].grad[1, 3].abs().sum() == 0  # masked-out task position


def test_masked_l1_ignores_padding_invalid_steps_and_actionless_samples() -> None:
    pred = torch.zeros(3, 2, 3, requires_grad=True)
    target = torch.ones(3, 2, 3)
    dim_mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    has_action = torch.tensor([True, True, False])
    target[0, :, 2] = 100.0  # padded dim
    target[1, 1] = float("nan")  # step past the episode end
    target[2] = -50.0  # action-less sample
    mask = dim_mask[:, None, :] & valid[:, :, None] & has_action[:, None, None]
    loss = masked_l1(pred, target, mask)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).all()
    # Averages over the True elements only: 4 + 3 of them.
    assert pred.grad[mask].abs().sum().item() == pytest.approx(1.0)


def test_masked_l1_with_nothing_supervised_is_zero_with_grad() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_l1(pred, torch.full((2, 3, 4), float("nan")), torch.zeros(2, 3, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (pred.grad == 0).all()
