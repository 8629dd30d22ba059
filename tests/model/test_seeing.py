"""What lets a small policy use its inputs: distinct query states, instructions it can tell apart,
proprio dropout, and a LAM loss that weighs the pixels that move."""

from __future__ import annotations

import pytest
import torch
from model_test_utils import IMAGE, random_batch

from lavla.model.config import BackboneConfig
from lavla.model.instructions import InstructionCollisionError, InstructionIdCheck, check_distinct
from lavla.model.lam import reconstruction_loss
from lavla.model.proprio import policy_proprio
from lavla.model.vl_backbone import TinyVLBackbone


def _backbone(**kw) -> TinyVLBackbone:
    torch.manual_seed(0)
    return TinyVLBackbone(BackboneConfig(image_size=IMAGE, patch_size=8, dim=32, depth=2, heads=2, **kw))


def test_queries_start_distinct() -> None:
    """Each query position has its own embedding: the Q query states of one sample differ (with one
    shared embedding and no query positions all Q states were the same vector)."""
    bb = _backbone().eval()
    with torch.no_grad():
        out = bb(random_batch(2), num_queries=8)
    q = torch.gather(out.hidden_states[-1], 1, out.query_index[:, :, None].expand(-1, -1, bb.dim))
    pairwise = torch.cdist(q[0], q[0])
    off_diag = pairwise[~torch.eye(8, dtype=torch.bool)]
    assert off_diag.min() > 1e-2 * q[0].norm(dim=-1).mean()
    with pytest.raises(ValueError, match="max_queries"):
        _backbone(max_queries=4)(random_batch(1), num_queries=5)


def test_instructions_that_truncate_alike_are_refused() -> None:
    left, right = "put the red block in the bottom left", "put the red block in the bottom right"
    check_distinct([left, right], 64)
    with pytest.raises(InstructionCollisionError, match=r"raise it to at least 33"):
        check_distinct([left, right, left], 32)
    check = InstructionIdCheck(8)
    check.check(["pick up the", "pick up the"])  # the same instruction twice is fine
    with pytest.raises(InstructionCollisionError):
        check.check(["pick up the red block"])
    bb = _backbone(max_text_len=32)
    batch = random_batch(2)
    batch["language"] = [left, right]
    with pytest.raises(InstructionCollisionError, match="max_text_len=32"):
        bb(batch, num_queries=1)


def test_proprio_dropout_zeroes_whole_vectors_in_training_only() -> None:
    batch = random_batch(64)
    batch["proprio_dim_mask"] = torch.ones_like(batch["proprio_dim_mask"])
    torch.manual_seed(0)
    out = policy_proprio(batch, dropout=0.5, training=True)
    dropped = (out == 0).all(1)
    assert 16 <= int(dropped.sum()) <= 48
    torch.testing.assert_close(out[~dropped], batch["proprio"][~dropped])
    torch.testing.assert_close(policy_proprio(batch, dropout=0.5, training=False), batch["proprio"])
    masked = random_batch(8)
    assert (policy_proprio(masked)[~masked["proprio_dim_mask"]] == 0).all()


def test_motion_weighted_reconstruction_counts_the_pixels_that_change() -> None:
    cond = torch.zeros(2, 3, 16, 16)
    target = cond.clone()
    target[:, :, 4:6, 4:6] = 1.0  # 4 of 256 pixels move
    copy = cond.clone()  # "nothing moved": the failure a plain MSE barely sees
    plain = reconstruction_loss(copy, target, cond)
    weighted = reconstruction_loss(copy, target, cond, motion_weight=20.0)
    assert plain == pytest.approx(4 / 256)
    assert weighted == pytest.approx(21 * 4 / (256 + 20 * 4))
    assert weighted > 4 * plain
    assert reconstruction_loss(target, target, cond, motion_weight=20.0) == 0.0


def test_a_constant_target_has_no_r2() -> None:
    """A dimension that never moves (roll/pitch in the level-wrist world) has no R^2: it used to read
    as a perfect 1.0 and lift the mean."""
    from lavla.model.probe import fit_ridge_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = torch.stack([x[:, 0] * 2.0, torch.zeros(200), torch.randn(200, generator=g)], dim=1)
    res = fit_ridge_probe(x[:100], y[:100], x[100:], y[100:])
    assert res.r2[0] > 0.99 and res.r2[1] is None and res.r2[2] < 0.1
    assert res.mean_r2 == pytest.approx((res.r2[0] + res.r2[2]) / 2)
