"""TFDS metadata files (``features.json``, ``dataset_info.json``) without TensorFlow.

Both files are the JSON form of TFDS protos. ``features.json`` is a nested tree
(``featuresDict`` / ``sequence`` / ``tensor`` / ``image`` / ``text``); on disk every leaf becomes
one flat ``tf.train.Example`` key (``steps/observation/image``), which is the only view the reader
needs: :class:`FeatureSpec` is one leaf. The writer side emits the same layout TFDS 4.9 writes
(sorted keys, int64 as strings), so ``tfds.builder_from_directory`` accepts our datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavla.data_service.errors import DataError

STEPS = "steps"
"""The RLDS sequence-of-steps feature; its leaves hold one value per step."""

_CLS = "tensorflow_datasets.core.features."
_PY_CLASS = {
    "dict": _CLS + "features_dict.FeaturesDict",
    "dataset": _CLS + "dataset_feature.Dataset",
    "tensor": _CLS + "tensor_feature.Tensor",
    "scalar": _CLS + "scalar.Scalar",
    "image": _CLS + "image_feature.Image",
    "text": _CLS + "text_feature.Text",
}
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf feature, addressed by its flat Example key."""

    key: str
    """Flat key as stored in the Example, e.g. ``steps/observation/image``."""
    kind: str
    """``image`` | ``tensor`` | ``scalar`` | ``text`` | ``class_label``."""
    dtype: str
    """Numpy dtype name of the decoded value (``uint8``, ``float32``, ``bool``, ``int64``, ``string``)."""
    shape: tuple[int, ...] = ()
    """Shape of one value (one step for step features); -1 marks an unknown dimension."""
    encoding: str = "none"
    """Images: ``png`` | ``jpeg`` (or ``none`` if unspecified); tensors: ``none`` | ``bytes`` | ``zlib``."""
    in_steps: bool = False
    """True for leaves under ``steps`` (one value per step), False for episode-level features."""
    description: str = ""
    """The feature's doc string, if any (kept so the writer can round-trip it)."""

    @property
    def is_bytes(self) -> bool:
        """Stored as a ``bytes_list`` (encoded images, text, string or byte-encoded tensors)."""
        return self.kind in ("image", "text") or self.dtype == "string" or self.encoding in ("bytes", "zlib")


def _dims(node: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in node.get("shape", {}).get("dimensions", []))


def parse_features(tree: dict[str, Any], *, source: Path | str = "features.json") -> dict[str, FeatureSpec]:
    """Flattens a ``features.json`` tree into ``{flat key: FeatureSpec}``."""
    if "featuresDict" not in tree:
        raise DataError("unsupported features.json layout (expected a top-level 'featuresDict'; "
                        "datasets written by TFDS < 4.0 must be rebuilt)", file=source)
    out: dict[str, FeatureSpec] = {}

    def walk(node: dict[str, Any], prefix: str, in_steps: bool) -> None:
        doc = node.get("description", "")
        if "featuresDict" in node:
            for name, child in node["featuresDict"].get("features", {}).items():
                walk(child, f"{prefix}/{name}" if prefix else name, in_steps)
        elif "sequence" in node:
            if in_steps or prefix != STEPS:
                raise DataError("nested or non-'steps' sequences are not supported by the RLDS reader",
                                file=source, field=prefix)
            walk(node["sequence"]["feature"], prefix, True)
        elif "image" in node:
            img = node["image"]
            out[prefix] = FeatureSpec(prefix, "image", img.get("dtype", "uint8"), _dims(img),
                                      img.get("encodingFormat", "none") or "none", in_steps, doc)
        elif "tensor" in node:
            t = node["tensor"]
            kind = "scalar" if node.get("pythonClassName", "").endswith("scalar.Scalar") else "tensor"
            out[prefix] = FeatureSpec(prefix, kind, t.get("dtype", "float32"), _dims(t),
                                      t.get("encoding", "none") or "none", in_steps, doc)
        elif "text" in node:
            out[prefix] = FeatureSpec(prefix, "text", "string", (), "none", in_steps, doc)
        elif "classLabel" in node:
            out[prefix] = FeatureSpec(prefix, "class_label", "int64", (), "none", in_steps, doc)
        else:
            kinds = sorted(k for k in node if k not in ("pythonClassName", "description", "valueRange"))
            raise DataError(f"unsupported TFDS feature type {node.get('pythonClassName', kinds)!r}",
                            file=source, field=prefix)

    walk(tree, "", False)
    return out


def features_tree(specs: list[FeatureSpec]) -> dict[str, Any]:
    """The ``features.json`` tree for flat leaves (the inverse of :func:`parse_features`)."""
    root: dict[str, Any] = {}
    for spec in specs:
        node = root
        parts = spec.key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = spec

    def leaf(spec: FeatureSpec) -> dict[str, Any]:
        shape = {"dimensions": [str(d) for d in spec.shape]} if spec.shape else {}
        if spec.kind == "image":
            out: dict[str, Any] = {"pythonClassName": _PY_CLASS["image"],
                                   "image": {"dtype": spec.dtype, "encodingFormat": spec.encoding, "shape": shape}}
        elif spec.kind == "text":
            out = {"pythonClassName": _PY_CLASS["text"], "text": {}}
        elif spec.kind in ("tensor", "scalar"):
            out = {"pythonClassName": _PY_CLASS[spec.kind],
                   "tensor": {"dtype": spec.dtype, "encoding": spec.encoding, "shape": shape}}
        else:
            raise ValueError(f"cannot write feature kind {spec.kind!r} ({spec.key})")
        if spec.description:
            out["description"] = spec.description
        return out

    def build(node: dict[str, Any], path: str) -> dict[str, Any]:
        feats = {name: leaf(child) if isinstance(child, FeatureSpec) else build(child, f"{path}/{name}".strip("/"))
                 for name, child in node.items()}
        d = {"pythonClassName": _PY_CLASS["dict"], "featuresDict": {"features": feats}}
        if path == STEPS:  # RLDS steps: a tfds.features.Dataset of unknown length around the step dict
            return {"pythonClassName": _PY_CLASS["dataset"], "sequence": {"feature": d, "length": "-1"}}
        return d

    return build(root, "")


@dataclass(frozen=True)
class SplitInfo:
    """One split as recorded in ``dataset_info.json``."""

    name: str
    """Split name (``train``, ``val``, ``test``...)."""
    shard_lengths: tuple[int, ...]
    """Episodes in each shard file, in shard order."""
    num_bytes: int = 0
    """Serialized payload bytes (informational)."""
    filepath_template: str = SHARD_TEMPLATE
    """TFDS file name template of the shards."""

    @property
    def num_examples(self) -> int:
        return sum(self.shard_lengths)

    def shard_filenames(self, dataset: str, file_format: str = "tfrecord") -> list[str]:
        n = len(self.shard_lengths)
        return [
            self.filepath_template.replace("{DATASET}", dataset).replace("{SPLIT}", self.name)
            .replace("{FILEFORMAT}", file_format).replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
            .replace("{SHARD_INDEX}", f"{i:05d}").replace("{NUM_SHARDS}", f"{n:05d}")
            for i in range(n)
        ]


@dataclass(frozen=True)
class DatasetInfo:
    """The parts of ``dataset_info.json`` the reader uses."""

    name: str
    """Dataset name (prefix of the shard file names)."""
    version: str
    """Version string, e.g. ``1.0.0``."""
    file_format: str
    """Shard file format; only ``tfrecord`` is readable here."""
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    """Splits by name, in file order."""
    description: str = ""
    """Free-text description."""


def parse_dataset_info(raw: dict[str, Any], *, source: Path | str = "dataset_info.json") -> DatasetInfo:
    fmt = raw.get("fileFormat", "tfrecord") or "tfrecord"
    if fmt != "tfrecord":
        raise DataError(f"file format {fmt!r} is not supported (only tfrecord)", file=source)
    splits = {}
    for s in raw.get("splits", []):
        try:
            lengths = tuple(int(x) for x in s.get("shardLengths", []))
        except (TypeError, ValueError) as e:
            raise DataError(f"split {s.get('name')!r}: bad shardLengths {s.get('shardLengths')!r}", file=source) from e
        if not lengths and int(s.get("numShards", 0) or 0):
            raise DataError(f"split {s.get('name')!r} has no shardLengths (TFDS < 4.0 metadata); rebuild the dataset",
                            file=source)
        splits[s["name"]] = SplitInfo(s["name"], lengths, int(s.get("numBytes", 0) or 0),
                                      s.get("filepathTemplate", SHARD_TEMPLATE) or SHARD_TEMPLATE)
    if "name" not in raw or "version" not in raw:
        raise DataError("dataset_info.json lacks 'name' or 'version'", file=source)
    return DatasetInfo(raw["name"], raw["version"], fmt, splits, raw.get("description", ""))


def dataset_info_dict(info: DatasetInfo, *, module_name: str = "lavla.data_service.formats.rlds_writer",
                      release_notes: dict[str, str] | None = None, citation: str = "") -> dict[str, Any]:
    """The ``dataset_info.json`` content TFDS writes for a generated dataset."""
    raw: dict[str, Any] = {
        "fileFormat": info.file_format,
        "moduleName": module_name,
        "name": info.name,
        "releaseNotes": release_notes or {info.version: "Initial release."},
        "splits": [
            {"filepathTemplate": s.filepath_template, "name": s.name, "numBytes": str(s.num_bytes),
             "shardLengths": [str(n) for n in s.shard_lengths]}
            for s in info.splits.values()
        ],
        "version": info.version,
    }
    if info.description:
        raw["description"] = info.description
    if citation:
        raw["citation"] = citation
    return raw


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError("missing (not a TFDS dataset directory?)", file=path) from e
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e}", file=path) from e
