import math

import pytest
import torch
import torch.nn.functional as F

from lavla.model.codebook_lookup import lookup_backend, nearest_code, nearest_code_reference
from lavla.model.config import QuantizerConfig
from lavla.model.quantizer import (
    EMAVectorQuantizer,
    NSVQuantizer,
    Quantizer,
    VectorQuantizer,
    build_quantizer,
    find_quantizers,
)


def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    z, cb = torch.randn(50, 6, generator=g), torch.randn(10, 6, generator=g)
    ids, q, err = nearest_code_reference(z, cb)
    d = torch.cdist(z, cb).pow(2)
    assert torch.equal(ids, d.argmin(1))
    torch.testing.assert_close(q, cb[ids])
    torch.testing.assert_close(err, d.min(1).values, atol=1e-4, rtol=1e-4)


def test_cpu_lookup_uses_the_reference():
    z, cb = torch.randn(8, 4), torch.randn(5, 4)
    assert lookup_backend(z, cb) == "reference"  # no TRITON_INTERPRET in this process, no CUDA
    assert torch.equal(nearest_code(z, cb)[0], nearest_code_reference(z, cb)[0])


# -- straight-through ---------------------------------------------------------------------------


def test_straight_through_gradient_reaches_encoder_and_codebook():
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 8)
    vq = VectorQuantizer(16, 8)
    out = vq(enc(torch.randn(32, 4)).view(8, 4, 8))
    assert out.quantized.shape == (8, 4, 8) and out.ids.shape == (8, 4)
    assert isinstance(out, tuple)  # ZeRO-3 attaches backward hooks only to tensors inside tuples/lists/dicts
    (out.quantized.pow(2).sum() + out.loss).backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_straight_through_passes_the_output_gradient_unchanged():
    vq = VectorQuantizer(4, 3)
    z = torch.randn(5, 3, requires_grad=True)
    g = torch.randn(5, 3)
    (vq(z).quantized * g).sum().backward()
    torch.testing.assert_close(z.grad, g)


def test_beta_weighs_the_commitment_term():
    beta = 0.5
    vq = VectorQuantizer(4, 3, beta=beta)
    z = torch.randn(5, 3, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    q = vq.codebook.detach()[out.ids]
    n = z.numel()
    # d/dz beta*||z - sg(q)||^2 / n ; the codebook term sends nothing to z.
    torch.testing.assert_close(z.grad, beta * 2 * (z.detach() - q) / n)
    # d/dc ||sg(z) - c||^2 / n, unweighted.
    expected = torch.zeros_like(vq.codebook)
    expected.index_add_(0, out.ids, 2 * (q - z.detach()) / n)
    torch.testing.assert_close(vq.codebook.grad, expected)
    mse = (z.detach() - q).pow(2).mean()
    torch.testing.assert_close(out.loss.detach(), mse + beta * mse)


@pytest.mark.parametrize("kind", ["st", "ema", "nsvq"])
def test_runs_in_fp32_under_autocast(kind):
    vq = build_quantizer(QuantizerConfig(kind=kind, num_codes=8, restart_from="codes"), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(torch.randn(6, 4).bfloat16())
    assert out.loss.dtype == torch.float32
    assert out.quantized.dtype == torch.bfloat16  # handed back in the caller's dtype
    assert all(b.dtype in (torch.float32, torch.float64, torch.long) for b in vq.buffers())


@pytest.mark.parametrize("kind", ["st", "nsvq"])
def test_bf16_parameters_as_deepspeed_casts_them(kind):
    vq = build_quantizer(QuantizerConfig(kind=kind, num_codes=8, codebook_dim=3), 6)
    for p in vq.parameters():  # DeepSpeed bf16 casts parameters, not buffers
        p.data = p.data.bfloat16()
    out = vq(torch.randn(5, 6).bfloat16())
    assert out.quantized.dtype == torch.bfloat16 and out.loss.dtype == torch.float32


def test_perplexity_active_codes_and_histogram():
    vq = VectorQuantizer(4, 4)
    vq.codebook.data = torch.eye(4) * 10
    z = vq.codebook.detach()[torch.tensor([0, 0, 1, 2])]
    out = vq(z)
    assert out.metrics["active_codes"] == 3
    p = torch.tensor([0.5, 0.25, 0.25])
    assert math.isclose(float(out.metrics["perplexity"]), float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-5)
    assert float(out.metrics["quant_error"]) == 0.0
    assert torch.equal(vq.usage_histogram(), torch.tensor([2.0, 1.0, 1.0, 0.0]))
    vq.eval()
    vq(z)  # eval does not count
    assert torch.equal(vq.usage_histogram(), torch.tensor([2.0, 1.0, 1.0, 0.0]))


def test_reduce_fn_sees_every_statistic_once_per_forward():
    vq = VectorQuantizer(4, 2)
    seen = []
    vq.reduce_fn = lambda c: (seen.append(c.clone()), c * 3)[1]  # stands in for an all-reduce over 3 ranks
    vq(torch.randn(5, 2))
    assert len(seen) == 1 and seen[0][:4].sum() == 5  # [counts | squared errors]
    assert vq.usage_histogram().sum() == 15
    assert list(find_quantizers(torch.nn.Sequential(vq))) == [vq]


# -- low-dim and cosine codebooks ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["st", "ema", "nsvq"])
def test_projected_cosine_codebook(kind):
    torch.manual_seed(0)
    vq = build_quantizer(QuantizerConfig(kind=kind, num_codes=8, codebook_dim=3, cosine=True, restart_from="codes"), 16)
    assert vq.code_dim == 3 and vq.proj_in is not None
    z = torch.randn(4, 5, 16, requires_grad=True)
    out = vq(z)
    assert out.quantized.shape == z.shape and out.ids.shape == (4, 5)
    torch.testing.assert_close(vq.codes().norm(dim=-1), torch.ones(8))
    # Cosine lookup: the chosen code has the largest cosine with the projected input.
    h = F.normalize(vq.proj_in(z.detach().reshape(-1, 16)), dim=-1)
    assert torch.equal(out.ids.flatten(), (h @ vq.codes().t()).argmax(1))
    (out.quantized.sum() + out.loss).backward()
    assert vq.proj_in.weight.grad is not None and vq.proj_out.weight.grad is not None
    assert z.grad is not None and z.grad.abs().sum() > 0


# -- EMA ----------------------------------------------------------------------------------------


def test_ema_update_follows_the_formula():
    vq = EMAVectorQuantizer(3, 2, decay=0.9, eps=1e-5)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    vq.embed_avg.copy_(vq.codebook)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]])
    out = vq(z)
    assert out.ids.tolist() == [0, 0, 1]
    cs = 0.9 * torch.ones(3) + 0.1 * torch.tensor([2.0, 1.0, 0.0])
    ea = 0.9 * torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]) + 0.1 * torch.tensor([[1.0, 1.0], [9.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(vq.cluster_size, cs)
    torch.testing.assert_close(vq.embed_avg, ea)
    n = cs.sum()
    torch.testing.assert_close(vq.codebook, ea / ((cs + 1e-5) / (n + 3e-5) * n)[:, None])
    # The quantized output used the codebook before the update.
    torch.testing.assert_close(out.quantized[2], torch.tensor([10.0, 0.0]))
    assert not any(p is vq.codebook for p in vq.parameters())


def test_ema_codes_converge_to_cluster_means_and_only_commitment_trains_z():
    torch.manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    vq = EMAVectorQuantizer(3, 2, decay=0.8, beta=0.25)
    vq.codebook.copy_(centers + 0.5)
    vq.embed_avg.copy_(vq.codebook)
    for _ in range(60):
        z = centers[torch.arange(96) % 3] + 0.1 * torch.randn(96, 2)
        vq(z)
    torch.testing.assert_close(vq.codebook, centers, atol=0.05, rtol=0)
    z = torch.randn(6, 2, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    q = out.quantized.detach()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - q) / z.numel(), atol=1e-6, rtol=1e-4)


def test_ema_restart_splits_the_donor_mass():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(8, 4, decay=0.9, restart_window=2, restart_noise=0.5)
    vq.codebook[0], vq.embed_avg[0] = 5.0, 5.0
    z = 0.5 * torch.randn(64, 4) + 5.0  # everything maps to code 0
    for _ in range(2):
        vq(z)
    live_mass = float(vq.cluster_size[~vq.dead_codes()].sum())
    assert vq.restart_due() and int((~vq.dead_codes()).sum()) == 1
    assert vq.restart_dead_codes() == 7
    # The donor's mass is shared with its copies; the dead codes' stale mass is dropped.
    torch.testing.assert_close(float(vq.cluster_size.sum()), live_mass)
    torch.testing.assert_close(vq.cluster_size, torch.full((8,), live_mass / 8))
    out = vq(z)
    assert out.metrics["active_codes"] >= 4  # the split copies share the cluster
    with pytest.raises(ValueError, match="restart_from='codes'"):
        EMAVectorQuantizer(8, 4, restart_from="batch")


# -- NSVQ ---------------------------------------------------------------------------------------


def test_nsvq_noise_substitution_and_gradients():
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 6)
    vq = NSVQuantizer(8, 6)
    z = enc(torch.randn(32, 4))
    out = vq(z)
    q = vq.codebook.detach()[out.ids]
    # ||q~ - z|| equals the quantization error ||q - z||, but q~ is not the code.
    torch.testing.assert_close((out.quantized - z).norm(dim=-1), (q - z).norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.quantized, q)
    assert out.loss.item() == 0.0 and "commit_loss" not in out.metrics
    out.quantized.pow(2).sum().backward()
    assert enc.weight.grad.abs().sum() > 0
    used = torch.zeros(8, dtype=torch.bool)
    used[out.ids.unique()] = True
    g = vq.codebook.grad
    assert g[used].abs().sum() > 0 and g[~used].abs().sum() == 0  # codes learn through ||z - q|| only
    vq.eval()
    assert torch.equal(vq(z.detach()).quantized, vq.codebook.detach()[vq(z.detach()).ids])


def test_lapa_restart_schedule():
    q = build_quantizer(QuantizerConfig(kind="nsvq", num_codes=8, restart_window=0, restart_from="codes",
                                        restart_schedule=[(100, 10), (1000, 100), (5000, 500)]), 4)
    windows = {}
    for step in (0, 99, 100, 999, 1000, 4999, 5000):
        q.train_steps.fill_(step)
        windows[step] = q.current_window()
    assert windows == {0: 10, 99: 10, 100: 100, 999: 100, 1000: 500, 4999: 500, 5000: 0}
    q.window_steps.fill_(10**6)
    assert not q.restart_due()  # past the schedule with restart_window 0: no more restarts


# -- dead-code restart ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,source", [("st", "batch"), ("st", "codes"), ("nsvq", "codes"), ("ema", "codes")])
def test_dead_code_restart_revives_unused_codes(kind, source):
    torch.manual_seed(0)
    vq: Quantizer = build_quantizer(QuantizerConfig(kind=kind, num_codes=8, restart_window=3, restart_from=source,
                                                    restart_noise=0.5), 4)
    z = torch.randn(64, 4) * 0.5 + 5.0  # far from the init codes: everything maps to one code
    with torch.no_grad():
        vq.codebook[0] = 5.0  # (EMA: refreshed from embed_avg on the next forward, so set both)
        if isinstance(vq, EMAVectorQuantizer):
            vq.embed_avg[0] = 5.0 * vq.cluster_size[0]
    for _ in range(3):
        out = vq(z)
    assert out.metrics["active_codes"] == 1
    assert vq.restart_due()
    dead_before = vq.dead_codes().clone()
    replaced = vq.restart_dead_codes(generator=torch.Generator().manual_seed(0))
    assert replaced == int(dead_before.sum()) == 7
    assert not vq.restart_due() and vq.usage_histogram(window=True).sum() == 0
    # Restarted codes sit among the encoder outputs, so they get used.
    out = vq(z)
    assert out.metrics["active_codes"] >= 4
    assert (vq.raw_codes().detach()[dead_before] - 5.0).abs().mean() < 2.0


def test_restart_moves_codes_through_a_buffer_not_the_parameter():
    """DeepSpeed's optimizer owns the parameter (its master copy overwrites edits at the next step)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, restart_window=2, restart_noise=0.5)
    z = torch.randn(32, 4) + 5.0
    for _ in range(2):
        vq(z)
    param = vq.codebook.detach().clone()
    assert vq.restart_dead_codes() == 7
    assert torch.equal(vq.codebook.detach(), param)  # untouched
    assert vq.restart_offset.abs().sum() > 0 and "restart_offset" in vq.state_dict()
    out = vq(z)
    assert out.metrics["active_codes"] >= 4
    (out.quantized.sum() + out.loss).backward()
    assert vq.codebook.grad.abs().sum() > 0  # the parameter keeps learning under the offset


def test_batch_restart_is_refused_after_multi_rank_statistics():
    vq = VectorQuantizer(8, 4, restart_window=1, restart_from="batch")
    vq.reduce_fn = lambda s: s * 2  # two ranks
    vq(torch.randn(16, 4))
    with pytest.raises(RuntimeError, match="restart_from='codes'"):
        vq.restart_dead_codes()


def test_restart_is_deterministic_without_a_generator():
    """Rank-identical restarts (EMA under ZeRO-3) need the same draw on every rank: seeded by the restart count."""
    results = []
    for _ in range(2):
        torch.manual_seed(len(results))  # different global RNG state each time
        vq = EMAVectorQuantizer(8, 4, restart_window=1, restart_noise=0.5)
        vq.codebook.copy_(torch.arange(32.0).view(8, 4))
        vq.embed_avg.copy_(vq.codebook)
        vq(torch.arange(32.0).view(8, 4)[:3].repeat(4, 1))
        vq.restart_dead_codes()
        results.append(vq.codebook.clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("kind", ["st", "ema", "nsvq"])
def test_module_cast_keeps_statistics_in_full_precision(kind):
    torch.manual_seed(0)
    vq = build_quantizer(QuantizerConfig(kind=kind, num_codes=16, restart_from="codes"), 6)
    vq.train()
    vq(torch.randn(64, 6))  # EMA moves the codebook off its bf16-representable init
    before = {n: b.clone() for n, b in vq.named_buffers()}
    vq.bfloat16()
    for name, b in vq.named_buffers():
        assert b.dtype == before[name].dtype, name
        assert torch.equal(b, before[name]), f"{name} was rounded"
    assert all(p.dtype == torch.bfloat16 for p in vq.parameters())  # parameters do follow the cast
    out = vq(torch.randn(5, 6).bfloat16())
    assert out.quantized.dtype == torch.bfloat16 and torch.isfinite(out.loss)
