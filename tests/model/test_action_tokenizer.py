"""LA-Tok action tokenizer: shapes, determinism, masking, learning, registration and trainer hooks."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Iterator

import draccus
import pytest
import torch

from lavla.data_service.config import DataConfig
from lavla.model.action_tokenizer import ActionTokenizer, chunk_features
from lavla.model.recipes.action_tokenizer.config import ActionTokenizerConfig, ActionTokenizerQuantizerConfig
from lavla.model.config import ModelConfig
from lavla.model.factory import build_model
from lavla.model.quantizer import EMAVectorQuantizer, find_quantizers
from lavla.model.recipes.action_tokenizer.policy import ActionTokenizerPolicy, action_mask
from model_test_utils import A, N, random_batch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is as fast and steadier on a shared machine
    yield
    torch.set_num_threads(threads)


def _cfg(**kw: Any) -> ActionTokenizerConfig:
    base: dict[str, Any] = dict(action_horizon=N, action_dim=A, dim=16, depth=1, heads=2, code_dim=8, decoder_hidden=32,
                                quantizer=ActionTokenizerQuantizerConfig(num_codes=16))
    base.update(kw)
    return ActionTokenizerConfig(**base)


def _policy(seed: int = 0, **kw: Any) -> ActionTokenizerPolicy:
    torch.manual_seed(seed)
    return ActionTokenizerPolicy(_cfg(**kw))


def test_forward_shapes_and_metrics() -> None:
    policy = _policy()
    batch = random_batch(6)
    loss, metrics = policy(batch)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    for key in ("loss/total", "loss/recon", "loss/mask", "loss/vq", "vq/perplexity", "vq/active_codes", "vq/quant_error"):
        assert key in metrics and metrics[key].dim() == 0 and not metrics[key].requires_grad, key
    total = metrics["loss/recon"] + metrics["loss/mask"] + metrics["loss/vq"]  # weights 1
    torch.testing.assert_close(metrics["loss/total"], total)
    out = policy.tokenizer(batch["action"], action_mask(batch))
    assert out.ids.shape == (6, N) and out.recon.shape == (6, N, A)
    assert chunk_features(batch["action"]).shape == (6, N, 3 * A)
    assert policy.tokens_per_sample == N and policy.num_codes == 16
    assert policy.reconstruct(batch).shape == (6, N, A)


def test_tokenize_is_deterministic_and_leaves_codebook_alone() -> None:
    policy = _policy()
    batch = random_batch(6)
    q = policy.tokenizer.quantizer
    before = {k: v.clone() for k, v in q.state_dict().items()}
    policy.train()
    ids = policy.tokenize(batch)
    assert ids.shape == (6, N) and ids.dtype == torch.int64
    assert ((ids >= 0) & (ids < 16)).all()
    assert torch.equal(policy.tokenize(batch), ids)
    policy.eval()
    assert torch.equal(policy.tokenize(batch), ids)
    assert policy.training is False
    policy.train()
    assert policy.tokenizer.training  # tokenize restores the mode
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k  # no usage counted, EMA codebook unmoved
    # Reconstruction decodes exactly the tokenized codes.
    torch.testing.assert_close(policy.reconstruct(batch),
                               policy.tokenizer.decode_ids(ids) * batch["action_dim_mask"][:, None, :].float())


def test_masked_positions_are_ignored() -> None:
    batch = random_batch(6)
    mask = action_mask(batch)
    assert (~mask).any() and (~batch["has_action"]).any() and (~batch["action_valid"]).any()
    other = dict(batch)
    other["action"] = torch.where(mask, batch["action"], torch.randn_like(batch["action"]) * 100)
    base = _policy()
    results = []
    for b in (batch, other):
        model = copy.deepcopy(base)  # the same weights and EMA state for both
        torch.manual_seed(123)  # the same latent mask
        loss, metrics = model(b)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), metrics, grads, model.tokenize(b)))
    (l0, m0, g0, i0), (l1, m1, g1, i1) = results
    assert l0 == l1 and m0["loss/recon"] == m1["loss/recon"] and m0["loss/mask"] == m1["loss/mask"]
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert torch.equal(i0, i1)
    # An all-unsupervised batch: zero recon and mask loss, still a finite loss with a graph.
    none = dict(batch, has_action=torch.zeros_like(batch["has_action"]))
    loss, metrics = _policy()(none)
    assert metrics["loss/recon"] == 0 and metrics["loss/mask"] == 0 and torch.isfinite(loss) and loss.requires_grad


def test_masked_latent_loss_only_in_training() -> None:
    batch = random_batch(8)
    policy = _policy(mask_ratio=0.5)
    torch.manual_seed(0)
    _, metrics = policy(batch)
    assert metrics["loss/mask"] > 0
    policy.eval()
    _, metrics = policy(batch)
    assert metrics["loss/mask"] == 0
    policy.train()
    _, metrics = _policy(mask_ratio=0.0)(batch)
    assert metrics["loss/mask"] == 0


def _structured_batch(seed: int = 3) -> dict[str, Any]:
    """16 chunks of 4 amplitudes x one smooth per-dim pattern: something a 16-code tokenizer can learn."""
    batch = random_batch(16, has_action=[True] * 16, seed=seed)
    g = torch.Generator().manual_seed(seed)
    amp = torch.tensor([-1.0, -0.5, 0.5, 1.0])[torch.randint(0, 4, (16,), generator=g)]
    t = torch.arange(N).float()[None, :, None]
    d = torch.arange(A).float()[None, None, :]
    batch["action"] = amp[:, None, None] * torch.sin(2 * math.pi * t / N + d) * batch["action_dim_mask"][:, None, :]
    return batch


def test_loss_falls_on_a_fixed_batch() -> None:
    batch = _structured_batch()
    policy = _policy(seed=2)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    # Judge in eval mode (no random latent mask): recon + vq of the whole batch, deterministic.
    policy.eval()
    _, before = policy(batch)
    policy.train()
    torch.manual_seed(0)
    for _ in range(50):
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    _, after = policy(batch)
    assert after["loss/total"] < 0.7 * before["loss/total"], (before, after)
    assert after["loss/recon"] < 0.7 * before["loss/recon"], (before, after)


def test_registration_and_build_through_the_factory() -> None:
    from lavla.trainer.config_io import load_config

    cfg = draccus.decode(ModelConfig, {"type": "action_tokenizer", "quantizer": {"num_codes": 8}})
    assert isinstance(cfg, ActionTokenizerConfig)
    assert cfg.quantizer.kind == "ema" and cfg.quantizer.num_codes == 8  # a partial section keeps the defaults
    run = load_config(["--config", str(REPO / "configs" / "action_tokenizer.yaml"), "--model.quantizer.num_codes=12"])
    assert isinstance(run.model, ActionTokenizerConfig) and run.model.quantizer.num_codes == 12
    model = build_model(run.model, run.data)
    assert isinstance(model, ActionTokenizerPolicy)
    assert isinstance(model.tokenizer.quantizer, EMAVectorQuantizer)
    with pytest.raises(ValueError, match="action_horizon"):
        build_model(_cfg(action_horizon=N + 1), DataConfig(action_horizon=N, max_action_dim=A))
    with pytest.raises(ValueError, match="max_action_dim"):
        build_model(_cfg(), DataConfig(action_horizon=N, max_action_dim=A + 2))
    with pytest.raises(ValueError, match="mask_ratio"):
        _cfg(mask_ratio=1.0)


def test_trainer_quantizer_hooks_restart_dead_codes() -> None:
    from lavla.trainer.model_hooks import QuantizerHooks

    policy = _policy(quantizer=ActionTokenizerQuantizerConfig(num_codes=64, restart_schedule=[], restart_window=3))
    hooks = QuantizerHooks(policy, zero_stage=3)
    assert [type(q) for q in hooks.quantizers] == [EMAVectorQuantizer]
    assert list(find_quantizers(policy)) == hooks.quantizers
    q = hooks.quantizers[0]
    batch = random_batch(4)
    restarted = 0.0
    for _ in range(3):
        policy(batch)
        restarted += hooks.after_step()["vq/restarted_codes"]
    assert restarted > 0  # 64 codes, 16 vectors a step: most are dead and get split from busy ones
    assert int(q.restart_count) == 1 and int(q.window_steps) == 0
    assert torch.isfinite(q.codebook).all()
    loss, _ = policy(batch)
    assert torch.isfinite(loss)


def test_tokenizer_validates_shapes() -> None:
    tok = ActionTokenizer(_cfg())
    with pytest.raises(ValueError, match="expects actions"):
        tok.tokenize(torch.zeros(2, N + 1, A), torch.ones(2, N + 1, A, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        tok(torch.zeros(2, N, A), torch.ones(2, N, dtype=torch.bool))
