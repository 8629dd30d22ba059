"""LAM pretraining through the trainer, then the annotation job and the probe CLI on its checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import REPO, read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def lam_run(tmp_path_factory):
    """A 3-step ZeRO-3 run of configs/lam_pretrain.yaml on a tiny private synthetic world."""
    root = tmp_path_factory.mktemp("lam")
    data = root / "data"
    run_dir = root / "run"
    run_deepspeed([
        "--config", str(REPO / "configs" / "lam_pretrain.yaml"),
        f"--run.dir={run_dir}",
        f"--data.synthetic.root={data}",
        "--data.synthetic.train_episodes=4", "--data.synthetic.val_episodes=2",
        "--data.synthetic.episode_length=10", "--data.synthetic.image_size=32",
        f"--data.datasets=[{{name: synthetic_world, path: {data}/synthetic_world/1.0.0, split: train, weight: 1.0}}]",
        "--data.image_size=32", "--model.lam.image_size=32",
        "--trainer.max_steps=3", "--trainer.global_batch_size=4", "--trainer.micro_batch_size=4", "--trainer.log_every=1",
    ], num_ranks=1, env={"LAVLA_CACHE_DIR": str(root / "cache")})
    return run_dir, data / "synthetic_world" / "1.0.0"


def test_lam_recipe_trains_through_the_trainer(lam_run):
    run_dir, _ = lam_run
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss/lam_recon", "lam/perplexity", "lam/active_codes", "lam/quant_error"):
        assert key in records[-1]
    assert (run_dir / "checkpoints" / "step_00000003" / "COMPLETE").is_file()


def test_annotation_job_writes_every_step_and_resumes(lam_run, tmp_path):
    from lavla.data_service.config import DatasetEntry
    from lavla.data_service.latents.store import LatentStore
    from lavla.data_service.sources import open_source
    from lavla.data_service.episode_frames import read_episode_frames
    from lavla.launcher.annotate_latents import main
    from lavla.trainer.export import load_checkpoint_model

    run_dir, dataset = lam_run
    out = tmp_path / "latents.zarr"
    args = ["--checkpoint", str(run_dir), "--data", str(dataset), "--out", str(out), "--batch-size", "7"]
    assert main(args) == 0
    store = LatentStore(out)
    assert store.episodes("synthetic_world") == [0, 1, 2, 3]
    assert store.metadata["embedding"] == "quantized" and store.metadata["strides"] == {"synthetic_world": 3}

    # Every step t is labelled with the LAM's tokens of (x_t, x_{min(t+H, T-1)}).
    policy, cfg, ckpt = load_checkpoint_model(run_dir)
    assert ckpt.name == "step_00000003"
    src = open_source(DatasetEntry(path=str(dataset)), cfg.data)
    ep = read_episode_frames(src, 2, cfg.data)
    t, f = ep.pair_indices()
    assert f[-1] == t[-1] == len(t) - 1 and f[0] == 3
    lat = policy.annotate(ep.frames[t], ep.frames[f])
    ids, emb = store.get("synthetic_world", 2, slice(None))
    assert ids.shape == (len(t), lat.ids.shape[1]) and emb.shape == tuple(lat.quantized.shape)
    assert np.array_equal(ids, lat.ids.numpy())
    np.testing.assert_allclose(emb, lat.quantized.numpy(), rtol=1e-5, atol=1e-6)

    # A re-run skips completed episodes; another split needs its own store (episode indices collide).
    from lavla.launcher.annotate_latents import parse_args, run

    assert run(parse_args(args)) == {"episodes": 0, "steps": 0, "skipped": 4}
    with pytest.raises(ValueError, match="other splits"):
        run(parse_args([*args, "--split", "val"]))
    val = run(parse_args([*args[:-4], "--out", str(tmp_path / "val.zarr"), "--split", "val", "--embedding", "continuous"]))
    assert val["episodes"] == 2
    assert LatentStore(tmp_path / "val.zarr").dim == lat.continuous.shape[-1]


def test_checkpoint_resolution_errors(tmp_path):
    from lavla.trainer.export import ExportError, IncompleteCheckpointError, load_checkpoint_model

    with pytest.raises(ExportError, match="neither a run directory"):
        load_checkpoint_model(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ExportError, match="no checkpoints yet"):
        load_checkpoint_model(tmp_path)
    (tmp_path / "checkpoints" / "step_00000002").mkdir()  # a save cut off before its COMPLETE marker
    with pytest.raises(IncompleteCheckpointError, match="no complete checkpoint"):
        load_checkpoint_model(tmp_path)


def test_probe_cli_reports_accuracy_and_chance(lam_run, capsys):
    from lavla.launcher.lam_probe import main

    run_dir, dataset = lam_run
    assert main(["--checkpoint", str(run_dir), "--data", str(dataset)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"tokens", "continuous", "r2_tokens", "r2_continuous"}
    assert 0 <= report["tokens"]["accuracy"] <= 1 and 0 < report["tokens"]["chance"] <= 1
    assert len(report["r2_continuous"]["r2"]) == 7
    # Roll/pitch never move in the synthetic world: no R^2 for them (None, not a perfect 1.0).
    assert report["r2_tokens"]["r2"][3] is None and report["r2_tokens"]["r2"][4] is None
    scored = [r for r in report["r2_tokens"]["r2"] if r is not None]
    assert scored and torch.isfinite(torch.tensor(scored)).all()
