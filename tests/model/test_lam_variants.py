"""The three LAM styles (Moto/LARA, LAPA, UniVLA) behind one recipe, HF frame encoders and media."""

from __future__ import annotations

import draccus
import numpy as np
import pytest
import torch
from model_test_utils import (
    IMAGE,
    random_batch,
    save_tiny_hf_vision_model,
    tiny_lam_config,
    tiny_lapa_config,
    tiny_univla_config,
    zero3_emulation,
)

from lavla.data_service.config import DataConfig
from lavla.model.config import FrameEncoderConfig, ModelConfig, QuantizerConfig
from lavla.model.recipes.lam_pretrain.config import LamPretrainConfig
from lavla.model.factory import build_model
from lavla.model.frame_encoder import HFFrameEncoder
from lavla.model.lam import LatentActions
from lavla.model.recipes.lam_pretrain.config import LapaLamPretrainConfig, UnivlaLamPretrainConfig
from lavla.model.lam_config import UnivlaLamConfig
from lavla.model.recipes.lam_pretrain.policy import LamPretrainPolicy

VARIANTS = {
    "moto": lambda: LamPretrainConfig(lam=tiny_lam_config()),
    "moto_vit_decoder": lambda: LamPretrainConfig(lam=tiny_lam_config(decoder="vit", mformer_target="frame", decoder_residual=False)),
    "lapa": lambda: LapaLamPretrainConfig(lam=tiny_lapa_config()),
    "univla": lambda: UnivlaLamPretrainConfig(lam=tiny_univla_config()),
}


def _policy(name: str) -> LamPretrainPolicy:
    torch.manual_seed(0)
    return LamPretrainPolicy(VARIANTS[name]())


@pytest.mark.parametrize("name", VARIANTS)
def test_encode_decode_interface(name):
    policy = _policy(name)
    lam = policy.lam
    b = random_batch(3)
    lat = lam.encode(b["image_primary"], b["image_future"])
    assert isinstance(lat, LatentActions) and isinstance(lat, tuple)  # ZeRO-3 hooks tensors inside tuples
    q = lat.ids.shape[1]
    assert lat.ids.shape == (3, q) and lat.ids.dtype == torch.long
    assert lat.continuous.shape == lat.quantized.shape == (3, q, lat.continuous.shape[-1])
    assert lat.continuous.requires_grad and lat.vq_loss.dim() == 0
    out = lam.decode(b["image_primary"], lat.quantized)
    if name == "univla":
        assert out.shape == (3, lam.num_patches, lam.encoder.dim)  # predicted features of x_{t+H}
    else:
        assert out.shape == (3, 3, IMAGE, IMAGE)
    assert list(lam.parameters(recurse=False)) == []  # ZeRO-3: parameters only in submodules


@pytest.mark.parametrize("name", VARIANTS)
def test_a_few_steps_reduce_reconstruction_loss(name):
    policy = _policy(name)
    b = random_batch(8, seed=1)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=2e-3)
    recon = []
    for _ in range(15):
        loss, metrics = policy(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recon.append(float(metrics["loss/lam_recon"]))
    assert {"loss/total", "loss/lam", "loss/lam_recon", "loss/vq", "lam/perplexity", "lam/active_codes",
            "lam/quant_error"} <= set(metrics)
    assert recon[-1] < 0.8 * recon[0], recon


@pytest.mark.parametrize("name", VARIANTS)
def test_parameters_are_only_read_inside_their_owners_forward(name):
    policy = _policy(name)
    b = random_batch(2)
    with torch.no_grad(), zero3_emulation(policy):
        policy(b)
        policy.annotate(b["image_primary"], b["image_future"])
        policy.media(b)


def test_lapa_decode_matches_the_training_path():
    """The encoder is causal in time, so decode(x_t, q) (x_t encoded alone) equals what forward decodes."""
    policy = _policy("lapa").eval()
    lam = policy.lam
    b = random_batch(2)
    with torch.no_grad():
        tokens = lam.encoder(torch.stack([b["image_primary"], b["image_future"]], dim=1))
        lat = lam.encode(b["image_primary"], b["image_future"])
        torch.testing.assert_close(lam.decode(b["image_primary"], lat.quantized), lam.decoder(tokens[:, 0], lat.quantized))
    assert lat.ids.shape == (2, 4) and policy.cfg.lam.quantizer.kind == "nsvq"


def test_lapa_x_t_tokens_reach_the_decoder_detached():
    policy = _policy("lapa")
    seen = {}
    policy.lam.decoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("first", args[0]))
    policy(random_batch(2))
    assert not seen["first"].requires_grad


def test_media_images_leave_codebook_statistics_alone():
    policy = _policy("moto")
    policy.train()
    q = policy.quantizer()
    b = random_batch(6)
    policy(b)
    usage, steps = q.usage_histogram().clone(), int(q.train_steps)
    media = policy.media(b, max_items=3)
    assert set(media) == {"lam/reconstruction", "lam/code_usage"}
    for img in media.values():
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    rec = media["lam/reconstruction"]
    assert rec.shape == (3 * IMAGE + 2 * 2, 3 * IMAGE + 2 * 2, 3)  # 3 rows of [x_t | x_{t+H} | prediction]
    np.testing.assert_array_equal(rec[:IMAGE, :IMAGE], b["image_primary"][0].permute(1, 2, 0).numpy())
    assert media["lam/code_usage"].shape[1] == 4 * q.num_codes
    assert policy.training and torch.equal(q.usage_histogram(), usage) and int(q.train_steps) == steps


def test_univla_media_shows_a_feature_change_map():
    media = _policy("univla").media(random_batch(2))
    assert media["lam/reconstruction"].shape == (2 * IMAGE + 2, 3 * IMAGE + 4, 3)


def test_annotate_is_eval_and_matches_predict_latents():
    policy = _policy("moto")
    b = random_batch(4)
    ids = policy.predict_latents(b)
    lat = policy.annotate(b["image_primary"], b["image_future"])
    assert torch.equal(ids, lat.ids) and policy.training
    assert policy.quantizer().usage_histogram().sum() == 0  # labelling never counts as training usage


# -- Hugging Face frame encoders ------------------------------------------------------------------


def test_moto_lam_with_a_frozen_hf_vit_from_a_local_path(tmp_path):
    path = save_tiny_hf_vision_model(tmp_path / "vit", "vit", image_size=16, processor_mean=(0.5, 0.5, 0.5))
    enc_cfg = FrameEncoderConfig(kind="hf", pretrained_path=str(path))
    torch.manual_seed(0)
    policy = LamPretrainPolicy(LamPretrainConfig(lam=tiny_lam_config(encoder=enc_cfg)))
    enc = policy.lam.encoder
    assert isinstance(enc, HFFrameEncoder) and enc.num_tokens == 1 + (16 // 8) ** 2 and enc.num_prefix_tokens == 1
    b = random_batch(2)  # 32x32 frames are resized to the ViT's 16x16
    policy.train()
    assert not enc.model.training  # frozen towers stay in eval mode
    loss, _ = policy(b)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert policy.lam.mformer.in_proj.weight.grad is not None
    # The encoder normalizes with the saved processor's mean/std and returns last_hidden_state.
    x = torch.nn.functional.interpolate(b["image_primary"].float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = enc.model(pixel_values=(x - 0.5) / 0.5).last_hidden_state
    torch.testing.assert_close(enc(b["image_primary"]), ref)


def test_vit_mae_keeps_every_patch_in_order(tmp_path):
    path = save_tiny_hf_vision_model(tmp_path / "mae", "vit_mae")
    enc = HFFrameEncoder(str(path))
    imgs = random_batch(2)["image_primary"]
    a, b = enc(imgs), enc(imgs)
    assert a.shape == (2, 1 + (IMAGE // 8) ** 2, 32)
    torch.testing.assert_close(a, b)  # mask ratio 0 and an identity shuffle: deterministic, all tokens


def test_univla_lam_on_a_tiny_dinov2(tmp_path):
    path = save_tiny_hf_vision_model(tmp_path / "dino", "dinov2", image_size=64)
    cfg = tiny_univla_config(encoder=FrameEncoderConfig(kind="hf", pretrained_path=str(path), input_size=32))
    torch.manual_seed(0)
    policy = LamPretrainPolicy(UnivlaLamPretrainConfig(lam=cfg))
    assert policy.lam.num_patches == 16 and policy.lam.prefix == 1
    b = random_batch(4, seed=2)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=2e-3)
    recon = []
    for _ in range(10):
        loss, m = policy(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recon.append(float(m["loss/lam_recon"]))
    assert recon[-1] < recon[0]
    assert all(p.grad is None for p in policy.lam.encoder.parameters())


# -- configs ------------------------------------------------------------------------------------


def test_lam_recipe_types_are_registered_and_built():
    for name, cls in (("lam", LamPretrainConfig), ("lam_lapa", LapaLamPretrainConfig), ("lam_univla", UnivlaLamPretrainConfig)):
        cfg = draccus.decode(ModelConfig, {"type": name})
        assert isinstance(cfg, cls)
        assert isinstance(build_model(cfg, DataConfig()), LamPretrainPolicy)
    lapa = draccus.decode(ModelConfig, {"type": "lam_lapa", "lam": {"quantizer": {"num_codes": 4}}})
    assert lapa.lam.quantizer.kind == "nsvq" and lapa.lam.quantizer.restart_schedule == [(100, 10), (1000, 100), (5000, 500)]
    with pytest.raises(ValueError, match="model.lam.image_size=64 != data.image_size=32"):
        build_model(LapaLamPretrainConfig(), DataConfig(image_size=32))


def test_config_validation():
    with pytest.raises(ValueError, match="frozen"):
        UnivlaLamConfig(encoder=FrameEncoderConfig(frozen=False))
    with pytest.raises(ValueError, match="restart_from=codes"):
        QuantizerConfig(kind="ema", restart_from="batch")
    with pytest.raises(ValueError, match="quantizer.kind"):
        QuantizerConfig(kind="fsq")
    with pytest.raises(ValueError, match="pretrained_path"):
        FrameEncoderConfig(kind="hf")


@pytest.mark.parametrize("recipe", ["lam_pretrain", "lam_lapa", "lam_univla"])
def test_yaml_recipes_load_build_and_run(recipe):
    from pathlib import Path

    from lavla.trainer.config_io import load_config

    cfg = load_config(["--config", str(Path(__file__).resolve().parents[2] / "configs" / f"{recipe}.yaml")])
    torch.manual_seed(0)
    policy = build_model(cfg.model, cfg.data)
    loss, metrics = policy(random_batch(2, image_size=cfg.data.image_size))
    assert torch.isfinite(loss) and "lam/active_codes" in metrics
