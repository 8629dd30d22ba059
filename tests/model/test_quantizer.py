import math

import torch

from model.codebook_lookup import nearest_code
from model.quantizer import VectorQuantizer, find_quantizers


def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    z, cb = torch.randn(50, 6, generator=g), torch.randn(10, 6, generator=g)
    ids, q, err = nearest_code(z, cb)
    d = torch.cdist(z, cb).pow(2)
    assert torch.equal(ids, d.argmin(1))
    torch.testing.assert_close(q, cb[ids])
    torch.testing.assert_close(err, d.min(1).values, atol=1e-4, rtol=1e-4)


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


def test_runs_in_fp32_under_autocast():
    vq = VectorQuantizer(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(torch.randn(6, 4).bfloat16())
    assert out.loss.dtype == torch.float32
    assert out.quantized.dtype == torch.bfloat16  # handed back in the caller's dtype


def test_perplexity_active_codes_and_histogram():
    vq = VectorQuantizer(4, 4)
    vq.codebook.data = torch.eye(4) * 10
    z = vq.codebook.detach()[torch.tensor([0, 0, 1, 2])]
    out = vq(z)
    assert out.metrics["active_codes"] == 3
    p = torch.tensor([0.5, 0.25, 0.25])
    assert math.isclose(float(out.metrics["perplexity"]), float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-5)
    assert torch.equal(vq.usage_histogram(), torch.tensor([2.0, 1.0, 1.0, 0.0]))
    vq.eval()
    vq(z)  # eval does not count
    assert torch.equal(vq.usage_histogram(), torch.tensor([2.0, 1.0, 1.0, 0.0]))


def test_reduce_fn_sees_counts():
    vq = VectorQuantizer(4, 2)
    seen = []
    vq.reduce_fn = lambda c: (seen.append(c.clone()), c * 3)[1]  # stands in for an all-reduce over 3 ranks
    vq(torch.randn(5, 2))
    assert seen and seen[0].sum() == 5
    assert vq.usage_histogram().sum() == 15
    assert list(find_quantizers(torch.nn.Sequential(vq))) == [vq]


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, restart_window=3)
    z = torch.randn(64, 4) + 5.0  # far from the tiny init codes: everything maps to one code
    for _ in range(3):
        out = vq(z)
    assert out.metrics["active_codes"] == 1
    assert vq.restart_due()
    dead_before = vq.dead_codes().clone()
    replaced = vq.restart_dead_codes(generator=torch.Generator().manual_seed(0))
    assert replaced == int(dead_before.sum()) == 7
    assert not vq.restart_due() and vq.usage_histogram(window=True).sum() == 0
    # Restarted codes sit on the encoder outputs, so they get used.
    out = vq(z)
    assert out.metrics["active_codes"] >= 5
    assert (vq.codebook.detach()[dead_before] - 5.0).abs().mean() < 2.0
