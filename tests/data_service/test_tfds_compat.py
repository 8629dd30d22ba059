"""Our TF-free reader/writer against TensorFlow Datasets itself (the ``[rlds]`` extra).

Skipped when tensorflow-datasets is not installed. Covers both directions: TFDS reads what our
writer produced (the synthetic world), and our reader reads what TFDS built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# TensorFlow and torch training in one process abort (thread-pool clash), so these tests run in
# a child pytest started by test_tfds_compat_driver.py.
if os.environ.get("LAVLA_TF_SUBPROCESS") != "1":
    pytest.skip("runs in a child process via test_tfds_compat_driver.py", allow_module_level=True)
tfds = pytest.importorskip("tensorflow_datasets")

from lavla.data_service.config import DataConfig, DatasetEntry  # noqa: E402
from lavla.data_service.datasets.registry import get_spec, register  # noqa: E402
from lavla.data_service.formats.rlds import RLDSDataset  # noqa: E402
from lavla.data_service.sources import open_source  # noqa: E402
from lavla.data_service.formats.splits import resolve_split  # noqa: E402
from lavla.data_service.stats import Normalizer  # noqa: E402
from lavla.data_service.sampling.windowing import make_sample  # noqa: E402


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _tfds_episodes(path: Path, split: str) -> list[dict[str, Any]]:
    builder = tfds.builder_from_directory(str(path))
    ds = builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()}, shuffle_files=False)
    return [_flatten(ep) for ep in tfds.as_numpy(ds)]


def _compare(ours: RLDSDataset, split: str, theirs: list[dict[str, Any]]) -> None:
    assert ours.num_episodes(split) == len(theirs)
    np.testing.assert_array_equal(ours.episode_lengths(split), [len(t["steps/is_first"]) for t in theirs])
    for i, ref in enumerate(theirs):
        ep = ours.read_episode(split, i)
        got = {**ep.steps, **ep.metadata}
        assert set(got) == set(ref), (set(got) ^ set(ref))
        for key, want in ref.items():
            have = got[key]
            if isinstance(have, list):  # bytes features: images (still encoded), text
                want_list = [want] if isinstance(want, bytes) else list(want)
                assert have == want_list, key
            else:
                assert have.dtype == want.dtype, key
                np.testing.assert_array_equal(have, want, err_msg=key)


def test_tfds_reads_our_writer_output(synthetic_dir: Path) -> None:
    builder = tfds.builder_from_directory(str(synthetic_dir))
    assert builder.info.splits["train"].num_examples == 6
    assert builder.info.features["steps"]["observation"]["image"].shape == (32, 32, 3)
    ours = RLDSDataset(synthetic_dir)
    for split in ("train", "val"):
        _compare(ours, split, _tfds_episodes(synthetic_dir, split))
    # TFDS's own image decode equals the frames we encoded.
    ds = builder.as_dataset(split="val[:1]", shuffle_files=False)
    ep = next(iter(tfds.as_numpy(ds)))
    frames = [s["observation"]["image"] for s in ep["steps"]]
    from PIL import Image
    import io

    ours_frames = [np.asarray(Image.open(io.BytesIO(b))) for b in ours.read_episode("val", 0).steps["steps/observation/image"]]
    np.testing.assert_array_equal(np.stack(frames), np.stack(ours_frames))


@pytest.mark.parametrize("split", ["train[:50%]", "train[2:5]", "train[-1:]+val", "train[90%:]", "train[:34%]",
                                   "val[0shard]", "all"])
def test_split_slicing_matches_tfds(synthetic_dir: Path, split: str) -> None:
    theirs = _tfds_episodes(synthetic_dir, split)
    ours = RLDSDataset(synthetic_dir)
    assert [ours.read_episode(split, i).metadata["episode_metadata/file_path"][0] for i in range(ours.num_episodes(split))] \
        == [t["episode_metadata/file_path"] for t in theirs]


def test_percent_rounding_matches_tfds() -> None:
    from tensorflow_datasets.core import splits as tfds_splits

    class _Info:
        def __init__(self, lengths: list[int]) -> None:
            self.shard_lengths, self.num_examples = lengths, sum(lengths)

    for n in [1, 3, 7, 10, 19, 20, 30, 33, 101, 999]:
        lengths = {"train": [n]}
        infos = {"train": _Info([n])}
        for expr in ["train[:95%]", "train[95%:]", "train[12.5%:87.5%]", "train[-5%:]", "train[:-33%]", "train[0.5%:]"]:
            (ref,) = tfds_splits.AbstractSplit.from_spec(expr).to_absolute(infos)
            (got,) = resolve_split(expr, lengths)
            assert (got.start, got.stop) == (ref.from_ or 0, n if ref.to is None else ref.to), (expr, n)


class TinyRlds(tfds.core.GeneratorBasedBuilder):
    """A TFDS-built RLDS dataset with OXE-style features (PNG primary, JPEG wrist)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> Any:
        f = tfds.features
        return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
            "steps": f.Dataset({
                "observation": f.FeaturesDict({
                    "image": f.Image(shape=(16, 16, 3), dtype=np.uint8, encoding_format="png"),
                    "wrist_image": f.Image(shape=(16, 16, 3), dtype=np.uint8, encoding_format="jpeg"),
                    "state": f.Tensor(shape=(8,), dtype=np.float32),
                }),
                "action": f.Tensor(shape=(7,), dtype=np.float32),
                "discount": f.Scalar(dtype=np.float32),
                "reward": f.Scalar(dtype=np.float32),
                "is_first": f.Scalar(dtype=np.bool_),
                "is_last": f.Scalar(dtype=np.bool_),
                "is_terminal": f.Scalar(dtype=np.bool_),
                "language_instruction": f.Text(),
            }),
            "episode_metadata": f.FeaturesDict({"file_path": f.Text()}),
        }))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        return {"train": self._generate_examples(7, 0), "val": self._generate_examples(2, 100)}

    def _generate_examples(self, n: int, base: int) -> Any:
        rng = np.random.default_rng(base)
        for e in range(n):
            T = 3 + e % 4
            steps = [{
                "observation": {"image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                                "wrist_image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                                "state": rng.normal(size=8).astype(np.float32)},
                "action": np.append(rng.normal(size=6), float(rng.integers(0, 2))).astype(np.float32),
                "discount": 1.0, "reward": float(t == T - 1), "is_first": t == 0, "is_last": t == T - 1,
                "is_terminal": t == T - 1, "language_instruction": f"task {base + e}",
            } for t in range(T)]
            yield f"ep{base + e}", {"steps": steps, "episode_metadata": {"file_path": f"/raw/ep{base + e}"}}


@pytest.fixture(scope="module")
def tfds_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds_built")
    TinyRlds(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=2))
    return data_dir / "tiny_rlds" / "1.0.0"


def test_our_reader_reads_tfds_output(tfds_built: Path) -> None:
    ours = RLDSDataset(tfds_built)
    assert ours.splits == ["train", "val"] or sorted(ours.splits) == ["train", "val"]
    assert ours.num_episodes("train") == 7
    for split in ("train", "val", "train[:50%]", "train[3:]+val[:1]", "train[1shard:]", "train[:-1shard]"):
        _compare(ours, split, _tfds_episodes(tfds_built, split))


def test_tfds_output_through_a_source(tfds_built: Path) -> None:
    register(type(get_spec("synthetic_world"))(**{**get_spec("synthetic_world").to_dict(), "name": "tiny_rlds"}))
    cfg = DataConfig(datasets=[DatasetEntry(name="tiny_rlds", path=str(tfds_built))], image_size=16, action_horizon=2)
    src = open_source(cfg.datasets[0], cfg)
    norm = Normalizer(src.statistics(), cfg.normalization, src.spec.action_absolute_mask)
    ep = src.read_episode(0)
    sample = make_sample(ep, 0, src, norm, cfg)
    assert sample["image_primary"].shape == (3, 16, 16) and sample["language"].startswith("task ")
    assert src.statistics().num_trajectories == 9
