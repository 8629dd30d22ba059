"""Model media to PNG files, the throughput report, fault-spec parsing and profile.steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lavla.model.recipe import Capabilities, Recipe
from lavla.trainer.config import ProfileConfig
from lavla.trainer.faults import _parse, maybe_poison_batch
from lavla.trainer.media import collect_media, has_media, write_pngs
from lavla.trainer.throughput_report import write_report


class WithMedia(Recipe):
    capabilities = Capabilities(logs_media=True)

    def media(self, batch):
        assert not torch.is_grad_enabled()
        self.eval()  # a model may switch modes while rendering; the trainer restores training mode
        img = np.zeros((4, 6, 3), np.uint8)
        img[..., 0] = 255
        return {"lam/reconstruction": img}


def test_media_written_as_png(tmp_path):
    m = WithMedia().train()
    assert has_media(m) and not has_media(nn.Linear(1, 1)) and not has_media(Recipe())
    images = collect_media(m, {})
    assert m.training
    (path,) = write_pngs(tmp_path / "media", 20, images)
    assert path.name == "lam_reconstruction_step00000020.png"
    assert np.array_equal(np.asarray(Image.open(path)), images["lam/reconstruction"])


def test_media_rejects_float_images():
    m = WithMedia()
    m.media = lambda batch: {"x": np.zeros((4, 4, 3), np.float32)}
    with pytest.raises(ValueError, match="uint8"):
        collect_media(m, {})


def test_report_markdown_and_png(tmp_path):
    steps = [{"index": float(i), "data": 0.01, "forward": 0.1, "backward": 0.2, "optimizer": 0.05,
              "other": 0.04, "step": 0.4} for i in (3, 4)]
    md, png = write_report(tmp_path, steps, {"samples_per_s": 20.0, "mfu": None}, top_ops="op table")
    text = md.read_text()
    assert "Profiled steps 3..4" in text and "| backward | 0.2000 | 50.0% |" in text and "op table" in text
    assert png is not None and Image.open(png).size[0] > 100


def test_profile_window_parsing():
    assert ProfileConfig(steps="3:5").window() == (3, 5)
    assert ProfileConfig(steps="4:4").window() == (4, 4)
    assert ProfileConfig().window() is None
    for bad in ("5:3", "0:2", "a:b", "185"):  # 185: what unquoted YAML makes of 3:5
        with pytest.raises(ValueError, match="profile.steps"):
            ProfileConfig(steps=bad)


def test_fault_spec(monkeypatch):
    assert _parse("kill_in_save:4, nan_at_step:3") == {("kill_in_save", 4), ("nan_at_step", 3)}
    with pytest.raises(ValueError, match="LAVLA_FAULTS"):
        _parse("explode:3")
    monkeypatch.setenv("LAVLA_FAULTS", "nan_at_step:2")
    batch = {"action": torch.zeros(2, 3), "image": torch.zeros(2, 3, dtype=torch.uint8)}
    assert torch.isnan(maybe_poison_batch(batch, 2, rank=0, micro=0)["action"]).all()
    assert maybe_poison_batch(batch, 2, rank=1, micro=0) is batch
    assert maybe_poison_batch(batch, 3, rank=0, micro=0) is batch


def test_wandb_sink_offline_records_metrics_and_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lavla.trainer.config import LoggingConfig, PretrainConfig, RunConfig, WandbConfig
    from lavla.trainer.metrics import MetricsSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = PretrainConfig(run=RunConfig(dir=str(tmp_path)), logging=LoggingConfig(wandb=WandbConfig(enabled=True)))
    sink = MetricsSink(tmp_path, cfg, {"trainer": {"max_steps": 1}}, resumed_step=0)
    assert sink._wandb is not None
    sink.write({"step": 1, "loss": 0.5, "lr": 1e-3, "samples_per_s": 2.0, "mfu": None})
    sink.write_images(1, {"lam/reconstruction": np.zeros((8, 8, 3), np.uint8)})
    sink.close()
    assert (tmp_path / "wandb_run_id").is_file()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert '"loss": 0.5' in (tmp_path / "metrics.jsonl").read_text()
