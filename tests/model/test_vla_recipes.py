"""Pixels-to-Tokens and LAPA recipes on the tiny backbone: the details that matter, in-process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lavla.data_service.config import DataConfig
from lavla.model.action_bins import QuantileActionBins
from lavla.model.recipes.action_tokenizer.config import ActionTokenizerConfig
from lavla.model.config import BackboneConfig
from lavla.model.factory import build_model
from lavla.model.head_config import L1HeadConfig
from lavla.model.recipes.action_tokenizer.policy import ActionTokenizerPolicy
from lavla.model.recipes.lapa.policy import LapaActionPolicy
from lavla.model.recipes.pixels_to_tokens.policy import CodeAxisPooling, LaDirectPolicy, LaTokPolicy
from lavla.model.recipes.pixels_to_tokens.config import BaselineConfig, LaAlignConfig, LaCondConfig, LaDirectConfig, LaTokConfig
from lavla.model.recipes.lapa.config import LapaActionConfig, LapaLatentConfig
from model_test_utils import A, IMAGE, N, P, random_batch, tiny_lam_config, zero3_emulation

DATA = DataConfig(image_size=IMAGE, action_horizon=N, max_action_dim=A, max_proprio_dim=P)


def _cfg(cls: type, **kw: Any) -> Any:
    cfg = cls(backbone=BackboneConfig(image_size=IMAGE, patch_size=8, dim=32, depth=3, heads=4), **kw)
    if hasattr(cfg, "head"):
        cfg.head = L1HeadConfig(num_blocks=2, dim=32, heads=4, action_horizon=N, action_dim=A, proprio_dim=P)
    cfg.latent.lam = tiny_lam_config()
    return cfg


def _build(cls: type, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(_cfg(cls, **kw), DATA)


def _train(model: torch.nn.Module, batch: dict[str, Any], steps: int = 25) -> list[dict[str, float]]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(steps):
        loss, metrics = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in metrics.items()})
    return history


EXPECTED_TERMS = {
    BaselineConfig: {"loss/action_l1"},
    LaAlignConfig: {"loss/action_l1", "loss/align", "align/cos"},
    LaDirectConfig: {"loss/action_l1", "loss/latent_ce", "latent/acc"},
    LaCondConfig: {"loss/action_l1", "loss/latent_ce", "latent/acc"},
    LapaLatentConfig: {"loss/latent_ce", "loss/text_ce", "latent/acc"},
}


@pytest.mark.parametrize("cls", list(EXPECTED_TERMS), ids=lambda c: c.__name__)
def test_each_recipe_learns_names_its_terms_and_is_zero3_safe(cls: type) -> None:
    model = _build(cls)
    batch = random_batch(8)
    history = _train(model, batch)
    assert EXPECTED_TERMS[cls] | {"loss/total"} <= set(history[0])
    assert not any(k.startswith("loss/lam") for k in history[0])  # the frozen LAM's losses are not terms
    assert history[-1]["loss/total"] < 0.7 * history[0]["loss/total"]
    with torch.no_grad(), zero3_emulation(model):  # parameters used only inside their owners' forward
        model(batch)
        out = model.predict_latents(batch) if cls is LapaLatentConfig else model.predict_action(batch)
    assert torch.isfinite(out.float()).all()


def test_la_align_reads_the_configured_layer_at_the_action_queries() -> None:
    model = _build(LaAlignConfig, align_layer=1)
    batch = random_batch(4, has_action=[False] * 4)  # no action loss: only the alignment drives gradients
    loss, metrics = model(batch)
    assert float(metrics["loss/action_l1"]) == 0.0 and float(metrics["loss/align"]) > 0
    loss.backward()
    blocks = model.backbone.blocks
    grad = [sum(float(p.grad.abs().sum()) for p in b.parameters() if p.grad is not None) for b in blocks]
    assert grad[0] > 0 and grad[1] == 0 and grad[2] == 0  # hidden_states[1] = output of block 0
    assert model.num_action_queries == N and model.num_latent_queries == 0


def test_la_align_target_is_the_mean_code_embedding_of_each_step() -> None:
    model = _build(LaAlignConfig)
    batch = random_batch(2)
    lat = model.latent(batch)
    out = model._encode(batch, logits=False)
    loss, _ = model._align_loss(out, lat)
    h = out.hidden_states[-1].gather(1, out.query_index[:, :, None].expand(-1, -1, out.hidden_states[-1].shape[-1]))
    cos = torch.nn.functional.cosine_similarity(model.align_proj(h), lat.emb.mean(2).expand(-1, N, -1), dim=-1)
    torch.testing.assert_close(loss, (1 - cos).mean())


def test_la_direct_extends_the_vocabulary_and_decodes_latent_tokens() -> None:
    plain = _build(BaselineConfig)
    model = _build(LaDirectConfig)
    k = model.latent.num_codes
    assert model.backbone.vocab_size == plain.backbone.vocab_size + k
    assert model.latent_token_ids.tolist() == list(range(plain.backbone.vocab_size, plain.backbone.vocab_size + k))
    assert model.backbone.added_tokens == [f"<ACT_{i}>" for i in range(k)]
    assert model.num_latent_queries == model.latent.codes_per_step  # online: one latent step
    ids = model.predict_latents(random_batch(3))
    assert ids.shape == (3, model.num_latent_queries) and int(ids.max()) < k


def test_la_direct_pools_over_the_code_axis() -> None:
    pool = CodeAxisPooling(8)
    with torch.no_grad():
        pool.query.normal_()
    x = torch.randn(2, 3, 4, 8)  # [B, steps, codes, H]
    out = pool(x)
    assert out.shape == (2, 3, 8)
    torch.testing.assert_close(pool(x[:, :, torch.randperm(4)]), out)  # codes are a set
    torch.testing.assert_close(pool(x[:, [2, 0, 1]]), out[:, [2, 0, 1]])  # steps stay apart


def test_samples_without_actions_train_only_latent_losses() -> None:
    model = _build(LaCondConfig)
    loss, metrics = model(random_batch(4, has_action=[False] * 4))
    assert float(metrics["loss/action_l1"]) == 0.0 and float(metrics["loss/latent_ce"]) > 0
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.head.parameters())


def _offline_batch(b: int, q: int, d: int, k: int) -> dict[str, Any]:
    batch = random_batch(b)
    g = torch.Generator().manual_seed(1)
    batch["latent_ids"] = torch.randint(0, k, (b, N, q), generator=g)
    batch["latent_emb"] = torch.randn(b, N, q, d, generator=g)
    batch["latent_valid"] = torch.ones(b, N, dtype=torch.bool)
    batch["has_latent"] = torch.tensor([True] * (b - 1) + [False])
    return batch


def test_offline_labels_give_one_latent_step_per_action_step() -> None:
    cfg = _cfg(LaDirectConfig)
    cfg.latent.source, cfg.latent.codes_per_step, cfg.latent.num_codes, cfg.latent.code_dim = "offline", 2, 6, 5
    torch.manual_seed(0)
    model = LaDirectPolicy(cfg, DATA)
    assert model.latent is not None and model.latent.lam is None
    assert model.num_latent_queries == N * 2
    batch = _offline_batch(4, 2, 5, 6)
    targets, mask = model._latent_targets(batch, model.latent(batch))
    assert torch.equal(targets, batch["latent_ids"].flatten(1))  # step-major, as the queries
    assert not mask[-1].any() and mask[:-1].all()  # the unlabelled sample is masked
    history = _train(model, batch, steps=20)
    assert history[-1]["loss/latent_ce"] < history[0]["loss/latent_ce"]
    with pytest.raises(ValueError, match="data.latent_labels"):
        build_model(cfg, DATA)
    with pytest.raises(KeyError, match="latent_ids"):
        model(random_batch(2))


def test_la_tok_predicts_the_tokenizers_codes() -> None:
    torch.manual_seed(0)
    tok_cfg = ActionTokenizerConfig()
    tok_cfg.action_horizon, tok_cfg.action_dim = N, A
    tokenizer = ActionTokenizerPolicy(tok_cfg)
    model = LaTokPolicy(_cfg(LaTokConfig), DATA, tokenizer=tokenizer)
    assert model.num_latent_queries == N and len(model.latent_token_ids) == tokenizer.num_codes
    assert model.backbone.added_tokens[0] == "<LA_0>"
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    batch = random_batch(8)
    targets, mask = model._latent_targets(batch, None)
    assert torch.equal(targets, tokenizer.tokenize(batch))
    assert torch.equal(mask, batch["action_valid"] & batch["has_action"][:, None])
    before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    history = _train(model, batch)
    assert history[-1]["loss/latent_ce"] < history[0]["loss/latent_ce"]
    assert all(torch.equal(before[k], v) for k, v in model.tokenizer.state_dict().items())  # frozen, EMA included
    with pytest.raises(ValueError, match="tokenizer_init"):
        LaTokPolicy(_cfg(LaTokConfig), DATA)


def test_lapa_latent_adds_the_weighted_text_lm_loss() -> None:
    from lavla.model.vl_backbone import tokenize_bytes

    model = _build(LapaLatentConfig)
    assert model.cfg.text_loss_weight == 0.01  # LAPA: 0.99 latent CE + 0.01 text CE
    batch = random_batch(4)
    loss, metrics = model(batch)
    torch.testing.assert_close(loss.detach(), 0.99 * metrics["loss/latent_ce"] + 0.01 * metrics["loss/text_ce"])
    # The text CE is byte-level next-token prediction over each instruction, from the last layer.
    bb = model.backbone
    out = bb(batch, num_queries=model.num_queries)
    ids, text_mask = tokenize_bytes(list(batch["language"]), bb.cfg.max_text_len)
    start = int(out.query_index[0, 0]) - ids.shape[1]
    logits = bb.lm_head(out.hidden_states[-1][:, start : start + ids.shape[1]])
    tgt = text_mask[:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][tgt], ids[:, 1:][tgt])
    torch.testing.assert_close(metrics["loss/text_ce"], manual.detach())
    off, m_off = _build(LapaLatentConfig, text_loss_weight=0.0)(batch)
    assert "loss/text_ce" not in m_off and torch.equal(off.detach(), m_off["loss/latent_ce"])
    with pytest.raises(ValueError, match="lapa_latent only"):
        LapaActionConfig(text_loss_weight=0.01)


def test_lapa_action_bins_each_dimension_and_debins_predictions() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(2000, A)).astype(np.float32)
    samples[:, -1] = rng.integers(0, 2, 2000)  # a binary gripper
    bins = QuantileActionBins.fit(samples, 16)
    assert int(bins.num_valid[-1]) == 2
    cfg = _cfg(LapaActionConfig, num_bins=16, action_horizon=2)
    torch.manual_seed(0)
    model = LapaActionPolicy(cfg, DATA, bins=bins)
    assert model.num_queries == 2 * A
    batch = random_batch(8)
    batch["action"][..., -1] = (batch["action"][..., -1] > 0).float()
    history = _train(model, batch, steps=40)
    assert history[-1]["loss/action_ce"] < 0.75 * history[0]["loss/action_ce"]
    pred = model.predict_action(batch)
    assert pred.shape == (8, 2, A)
    mask = batch["action_dim_mask"][:, None, :].expand(-1, 2, -1) & batch["action_valid"][:, :2, None] & batch["has_action"][:, None, None]
    err = (pred - batch["action"][:, :2]).abs()[mask]
    widths = bins.bin_widths()  # [A, bins]
    assert float(err.median()) < float(widths[torch.isfinite(widths)].max())
    assert set(pred[..., -1][batch["action_dim_mask"][:, -1]].unique().tolist()) <= {0.0, 1.0}  # gripper decodes exactly
    # Bins a dimension does not have are never predicted.
    logits = model._bin_logits(torch.zeros(1, 2 * A, 16))
    assert torch.isneginf(logits[0, 0, -1, 2:]).all() or (logits[0, 0, -1, 2:] < -1e30).all()


def test_lapa_action_builder_fits_or_reads_bins(tmp_path) -> None:
    cfg = _cfg(LapaActionConfig, num_bins=8)
    bins = QuantileActionBins.fit(np.random.default_rng(0).normal(size=(500, A)).astype(np.float32), 8)
    path = tmp_path / "bins.json"
    import json

    path.write_text(json.dumps(bins.to_json()))
    cfg.bins_path = str(path)
    model = build_model(cfg, DATA)
    torch.testing.assert_close(model.bins.edges, bins.edges)
    cfg.num_bins = 16
    with pytest.raises(ValueError, match="bins"):
        build_model(cfg, DATA)
