"""Annotation files of human-video datasets -> :class:`Clip` records (one clip = one episode).

Two formats, chosen by suffix:

* ``.json``: Something-Something v2, a list of ``{"id": "78687", "label": "holding potato next to
  a bottle", "template": "Holding [something] next to [something]", ...}``; the video is
  ``<videos>/<id>.webm`` (``.mp4`` also accepted). The instruction is ``label`` (the filled-in
  sentence), else ``template`` without its brackets.
* ``.csv``: a header with (at least) ``path,instruction``; ``path`` is relative to the videos
  directory unless absolute (e.g. Ego4D clips with their narration).

A row without a usable id/path or instruction does not shift the others: it stays an episode
with an ``error`` (strict readers raise it, lenient ones give it no samples).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lavla.data_service.errors import DataError

SPLIT_FILE_PATTERNS = ("{split}.json", "{split}.csv", "labels/{split}.json", "annotations/{split}.json",
                       "annotations/{split}.csv", "something-something-v2-{split}.json")
"""Where a split's annotation file is looked for under the dataset directory, in order."""
SINGLE_FILE_NAMES = ("annotations.csv", "annotations.json")
"""A dataset-wide annotation file used when no per-split file exists (its split is ``train``)."""
KNOWN_SPLITS = ("train", "val", "validation", "test")
"""Split names ``all`` expands to (those with a file)."""
SSV2_EXTENSIONS = (".webm", ".mp4")
SSV2_VIDEO_DIR = "20bn-something-something-v2"
"""SSv2's video folder name; ``<id>.webm`` is looked for in the dataset dir, ``videos/`` and this."""


@dataclass(frozen=True)
class Clip:
    """One annotated video clip."""

    key: str
    """Stable id: the SSv2 id or the CSV path (names the clip in the frame cache)."""
    path: Path
    """Video file."""
    instruction: str
    """Natural-language description of what happens."""
    row: int
    """Position in the annotation file (0-based, header excluded)."""
    annotations: Path
    """The annotation file the clip comes from."""
    error: str | None = None
    """Why the row is unusable (missing field), or None."""
    field: str | None = None
    """Annotation field the error is about."""


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (annotation files are small: part of the source fingerprint)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ssv2_instruction(row: dict[str, object]) -> str:
    label = row.get("label")
    if isinstance(label, str) and label.strip():
        return label.strip()
    template = row.get("template")
    if isinstance(template, str) and template.strip():
        return re.sub(r"\[([^\]]*)\]", r"\1", template).strip()
    return ""


def _ssv2_video(videos: Path, vid: str) -> Path:
    for folder in (videos, videos / "videos", videos / SSV2_VIDEO_DIR):
        for ext in SSV2_EXTENSIONS:
            p = folder / f"{vid}{ext}"
            if p.exists():
                return p
    return videos / f"{vid}{SSV2_EXTENSIONS[0]}"


def _load_json(file: Path, videos: Path) -> list[Clip]:
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read annotations: {e}", file=file) from e
    if not isinstance(rows, list):
        raise DataError("expected a JSON list of {\"id\", \"label\"/\"template\"} objects (Something-Something v2)",
                        file=file)
    clips = []
    for i, row in enumerate(rows):
        vid = str(row.get("id", "")).strip() if isinstance(row, dict) else ""
        if not vid:
            clips.append(Clip(f"row{i}", videos, "", i, file, "missing video id", "id"))
            continue
        text = _ssv2_instruction(row)
        clips.append(Clip(vid, _ssv2_video(videos, vid), text, i, file,
                          None if text else "missing label/template", None if text else "label"))
    return clips


def _load_csv(file: Path, videos: Path) -> list[Clip]:
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in ("path", "instruction") if c not in header]
            if missing:
                raise DataError(f"CSV header {header} lacks column(s) {missing} (expected path,instruction)", file=file)
            rows = [{(k or "").strip(): (v or "") for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read annotations: {e}", file=file) from e
    clips = []
    for i, row in enumerate(rows):
        rel, text = row["path"].strip(), row["instruction"].strip()
        if not rel:
            clips.append(Clip(f"row{i}", videos, text, i, file, "missing video path", "path"))
            continue
        path = Path(rel) if Path(rel).is_absolute() else videos / rel
        ok = bool(text)
        clips.append(Clip(rel, path, text, i, file, None if ok else "empty instruction", None if ok else "instruction"))
    return clips


def load_annotations(file: str | Path, videos: str | Path) -> list[Clip]:
    """Clips of one annotation file (format by suffix); DataError if the file is missing or malformed."""
    file, videos = Path(file), Path(videos)
    if not file.is_file():
        raise DataError("annotation file not found", file=file)
    if file.suffix.lower() == ".json":
        return _load_json(file, videos)
    if file.suffix.lower() == ".csv":
        return _load_csv(file, videos)
    raise DataError("unknown annotation format (expected .json for SSv2 or .csv with path,instruction)", file=file)


def find_split_file(root: str | Path, split: str) -> Path | None:
    """The annotation file of ``split`` under ``root`` (see :data:`SPLIT_FILE_PATTERNS`), or None."""
    root = Path(root)
    for pattern in SPLIT_FILE_PATTERNS:
        p = root / pattern.format(split=split)
        if p.is_file():
            return p
    if split == "train":
        for name in SINGLE_FILE_NAMES:
            if (root / name).is_file():
                return root / name
    return None


def split_names(expr: str) -> list[str]:
    """Base split names in a TFDS-style expression (``train[:95%]+val`` -> [train, val])."""
    names = []
    for part in str(expr).split("+"):
        m = re.match(r"\s*([\w-]+)", part)
        if m is None:
            raise ValueError(f"unrecognized split format {expr!r}")
        names.append(m.group(1))
    return names
