"""``python -m lavla.data_service.benchmarks.reader_bench``: runs standalone, reports every reader; the TF reference runs in a child."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("zarr")

from lavla.data_service.benchmarks import reader_bench as bench  # noqa: E402

from .video_helpers import csv_dataset  # noqa: E402


def test_standalone_run_generates_its_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rates.json"
    assert bench.main(["--episodes", "3", "--seconds", "0.05", "--size", "16", "--only", "rlds,video,cache",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "generated 3 synthetic episodes" in text and "built the frame cache: 3 clips" in text
    rates = json.loads(out.read_text())
    assert [r["reader"].split(":")[0] for r in rates] == ["rlds"] + ["video synthetic_human_video"] * 4
    assert all(r["episodes"] >= 3 and r["frames"] > 0 and r["cpu_s"] > 0 for r in rates)
    assert "PyAV, random (t, t+H) pairs" in text and "zarr cache, whole clips" in text
    assert "tf.data" not in text and "tensorflow" not in sys.modules  # never in this process


def test_given_videos_without_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = csv_dataset(tmp_path / "ds", [8, 9])
    assert bench.main(["--videos", str(root), "--seconds", "0.05", "--size", "16", "--only", "video,cache"]) == 0
    text = capsys.readouterr().out
    assert "ds: PyAV, whole clips" in text and "no complete frames.zarr" in text


def test_unknown_reader_is_rejected() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "rlds,ray"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="needs the [rlds] extra (tensorflow-datasets)")
def test_tfds_reference_in_a_child_process(synthetic_dir: Path) -> None:
    ours = bench.bench_rlds(synthetic_dir, "train", 0.05)
    ref = bench.run_tfds_child(synthetic_dir, "train", 0.2)
    assert isinstance(ref, bench.Rate), ref
    # Both decode the same frames per episode (two cameras): the counts agree per episode.
    assert ref.frames / ref.episodes == pytest.approx(ours.frames / ours.episodes, rel=0.35)
    assert "ours / tf.data" in bench.ratio_line(ours, ref)
    assert "tensorflow" not in sys.modules
