import torch

from model_test_utils import IMAGE, random_batch, tiny_lam_config
from lavla.model.config import FrameEncoderConfig
from lavla.model.lam import LatentActionModel


def test_encode_decode_shapes_and_token_types():
    torch.manual_seed(0)
    lam = LatentActionModel(tiny_lam_config())
    b = random_batch(3)
    lat = lam.encode(b["image_primary"], b["image_future"])
    assert lat.continuous.shape == (3, 4, 8) and lat.quantized.shape == (3, 4, 8) and lat.ids.shape == (3, 4)
    assert lat.ids.dtype == torch.long and lat.vq_loss.dim() == 0
    assert lat.continuous.requires_grad
    img = lam.decode(b["image_primary"], lat.quantized)
    assert img.shape == (3, 3, IMAGE, IMAGE) and img.dtype == torch.float32
    # The two frames carry different token types (Moto's legacy code used type 0 for both).
    n = lam.encoder.num_tokens
    types = lam.mformer.type_ids
    assert set(types[4 : 4 + n].tolist()) == {1} and set(types[-n:].tolist()) == {2}
    assert list(lam.parameters(recurse=False)) == []  # ZeRO-3: parameters only in submodules


def test_frozen_frame_encoder():
    lam = LatentActionModel(tiny_lam_config(encoder=FrameEncoderConfig(dim=32, depth=1, heads=2, frozen=True)))
    assert not any(p.requires_grad for p in lam.encoder.parameters())
    loss, _ = lam(random_batch(2))
    loss.backward()
    assert all(p.grad is None for p in lam.encoder.parameters())
    assert lam.mformer.queries.grad is not None


def test_a_few_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    lam = LatentActionModel(tiny_lam_config())
    b = random_batch(8, seed=1)
    opt = torch.optim.Adam(lam.parameters(), lr=2e-3)
    recon = []
    for _ in range(15):
        loss, metrics = lam(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recon.append(float(metrics["loss/lam_recon"]))
    assert set(metrics) >= {"loss/lam", "loss/lam_recon", "loss/vq", "lam/perplexity", "lam/active_codes"}
    assert recon[-1] < 0.8 * recon[0], recon


def test_film_decoder_modulates_every_conv_with_the_latent():
    torch.manual_seed(0)
    cfg = tiny_lam_config(decoder="conv", decoder_conditioning="film", decoder_depth=2)
    dec = LatentActionModel(cfg).decoder
    b = random_batch(2)
    latent = torch.randn(2, cfg.num_queries, cfg.decoder_dim, requires_grad=True)
    out = dec(b["image_primary"], latent)
    assert out.shape == (2, 3, IMAGE, IMAGE)
    # The latent moves the prediction, and each (scale, shift) pair of the 1 + depth convs gets a gradient.
    assert (dec(b["image_primary"], latent + 1.0) - out).abs().max() > 1e-3
    out.pow(2).sum().backward()
    per_slice = dec.latent_proj.weight.grad.abs().sum(1).view(2 * (cfg.decoder_depth + 1), cfg.decoder_dim).sum(1)
    assert (per_slice > 0).all(), per_slice
    assert latent.grad.abs().sum() > 0
    # bias conditioning keeps the original decoder: one shift, same parameter names as before
    bias = LatentActionModel(tiny_lam_config(decoder="conv", decoder_depth=2)).decoder
    assert bias.latent_proj.out_features == cfg.decoder_dim
    assert {n for n, _ in bias.named_parameters()} == {n for n, _ in dec.named_parameters()}

