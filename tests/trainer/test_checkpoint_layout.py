"""Checkpoint discovery: only complete checkpoints are visible; resume modes resolve correctly."""

from __future__ import annotations

import json

import pytest

from lavla.trainer.checkpoint import COMPLETE_MARKER, find_resume_checkpoint, list_complete, tag_for_step


def _fake_ckpt(root, step, complete=True):
    d = root / "checkpoints" / tag_for_step(step)
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": 1}))
    if complete:
        (d / COMPLETE_MARKER).write_text("{}")
    return d


def test_incomplete_checkpoints_are_invisible(tmp_path):
    _fake_ckpt(tmp_path, 100)
    _fake_ckpt(tmp_path, 200)
    _fake_ckpt(tmp_path, 300, complete=False)  # killed during save
    assert [c.step for c in list_complete(tmp_path / "checkpoints")] == [100, 200]
    assert find_resume_checkpoint("auto", tmp_path).step == 200


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    assert find_resume_checkpoint("auto", tmp_path) is None


def test_resume_never_refuses_a_used_run_dir(tmp_path):
    _fake_ckpt(tmp_path, 10)
    with pytest.raises(FileExistsError, match="--resume=auto"):
        find_resume_checkpoint("never", tmp_path)


def test_resume_from_explicit_path(tmp_path):
    d = _fake_ckpt(tmp_path, 40)
    assert find_resume_checkpoint(str(d), tmp_path).step == 40
    bad = _fake_ckpt(tmp_path, 50, complete=False)
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        find_resume_checkpoint(str(bad), tmp_path)
