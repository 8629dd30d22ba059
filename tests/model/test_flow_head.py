import pytest
import torch

from model_test_utils import A, E, N, P, tiny_head_config
from lavla.model.flow_head import FlowMatchingHead


def _inputs(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vl = torch.randn(b, 7, 16, generator=g)
    vl_mask = torch.ones(b, 7, dtype=torch.bool)
    vl_mask[0, -2:] = False
    proprio = torch.randn(b, P, generator=g)
    emb = torch.arange(b) % E
    action = torch.randn(b, N, A, generator=g)
    return vl, vl_mask, proprio, emb, action


def _head(**kw) -> FlowMatchingHead:
    torch.manual_seed(0)
    return FlowMatchingHead(tiny_head_config(**kw), vl_dim=16)


def test_beta_time_sampling_range_and_mean():
    head = _head()
    tau = head.sample_time(20000, torch.device("cpu"), torch.Generator().manual_seed(0))
    s = head.cfg.noise_s
    assert tau.min() >= (s - 1) / s and tau.max() <= 1.0
    # E[Beta(1.5, 1)] = 0.6 -> E[tau] = (s - 0.6) / s; mass is concentrated near tau = 0 (noise).
    assert abs(float(tau.mean()) - (s - 0.6) / s) < 0.01
    assert float((tau < 0.5).float().mean()) > 0.6
    assert head.bucket(tau).min() >= 0 and head.bucket(tau).max() <= 1000


def test_dit_structure_and_hidden_states():
    head = _head()
    blocks = head.dit.blocks
    assert all(blk.cross_attn is not None and blk.self_attn is None for blk in blocks[0::2])
    assert all(blk.self_attn is not None and blk.cross_attn is None for blk in blocks[1::2])
    vl, vl_mask, proprio, emb, action = _inputs()
    vel, hidden = head(vl, vl_mask, proprio, emb, action, torch.full((4,), 500))
    assert vel.shape == (4, N, A)
    assert len(hidden) == head.cfg.depth + 1 and all(h.shape == (4, 1 + N, head.cfg.dim) for h in hidden)


def _decoder_output_grad(head, mask, action, seed=0):
    captured = {}

    def hook(_m, _i, out):
        out.retain_grad()
        captured["v"] = out

    h = head.action_decoder.register_forward_hook(hook)
    vl, vl_mask, proprio, emb, _ = _inputs()
    res = head.loss(vl, vl_mask, proprio, emb, action, mask, generator=torch.Generator().manual_seed(seed))
    res.loss.backward()
    h.remove()
    return res, captured["v"].grad


def test_masked_loss_ignores_padded_dims_invalid_steps_and_actionless_samples():
    head = _head()
    *_, action = _inputs()
    dim_mask = torch.ones(4, A, dtype=torch.bool)
    dim_mask[:, -2:] = False
    valid = torch.ones(4, N, dtype=torch.bool)
    valid[1, -2:] = False
    has = torch.tensor([True, True, False, True])
    mask = dim_mask[:, None] & valid[:, :, None] & has[:, None, None]
    res, grad = _decoder_output_grad(head, mask, action)
    assert res.num_supervised == mask.sum()
    assert torch.all(grad[~mask] == 0)
    assert torch.all(grad[mask] != 0)
    # Garbage (even NaN) in masked entries changes nothing.
    junk = action.clone()
    junk[~mask] = float("nan")
    res2, _ = _decoder_output_grad(head, mask, junk)
    torch.testing.assert_close(res2.loss, res.loss)


def test_no_actions_gives_zero_loss_still_in_graph():
    head = _head()
    *_, action = _inputs()
    mask = torch.zeros(4, N, A, dtype=torch.bool)
    res, grad = _decoder_output_grad(head, mask, action)
    assert res.loss.detach().item() == 0.0 and res.loss.requires_grad
    assert torch.all(grad == 0)
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in head.dit.parameters() if p.requires_grad)


def test_sample_shape_and_determinism():
    head = _head().eval()
    vl, vl_mask, proprio, emb, _ = _inputs()
    a1 = head.sample(vl, vl_mask, proprio, emb, num_steps=4, generator=torch.Generator().manual_seed(3))
    a2 = head.sample(vl, vl_mask, proprio, emb, num_steps=4, generator=torch.Generator().manual_seed(3))
    a3 = head.sample(vl, vl_mask, proprio, emb, num_steps=4, generator=torch.Generator().manual_seed(4))
    assert a1.shape == (4, N, A)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)


def test_embodiments_use_different_weights():
    head = _head()
    vl, vl_mask, proprio, _, action = _inputs()
    t = torch.full((4,), 100)
    v0, _ = head(vl, vl_mask, proprio, torch.zeros(4, dtype=torch.long), action, t)
    v1, _ = head(vl, vl_mask, proprio, torch.ones(4, dtype=torch.long), action, t)
    assert not torch.allclose(v0, v1)


@pytest.mark.parametrize("bad", [dict(noise_s=0.0), dict(dim=30, heads=4)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        tiny_head_config(**bad)
