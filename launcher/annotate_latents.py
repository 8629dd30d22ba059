"""Label every step of a dataset with a trained LAM's latent actions (zarr latent-label store).

    python -m lavla.launcher.annotate_latents --checkpoint RUN_OR_CKPT_DIR --data CONFIG_OR_DATASET --out STORE.zarr

For every episode and every step t the LAM encodes the pair (x_t, x_{min(t+H, T-1)}) (H: the
dataset's LAM stride, or ``--stride``) and the job writes token ids ``[T, Q]`` and embeddings
``[T, Q, D]`` (the quantized code vectors, or with ``--embedding continuous`` the pre-quantization
latent LARA aligns to) under (dataset, episode) in ``data_service.latents.store``.

``--data`` is a YAML recipe (its ``data.datasets`` mixture) or one dataset directory
(``.../<name>/<version>``; ``--dataset-name`` if the registry name differs from ``<name>``).
Frames are decoded at the LAM's training resolution. Completed episodes are skipped on a re-run,
so a killed job resumes; ``--num-shards``/``--shard-index`` split episodes across processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lavla.data_service.episode_frames import EpisodeFrames, read_episode_frames

log = logging.getLogger("annotate_latents")

EMBEDDINGS = ("quantized", "continuous")


@torch.no_grad()
def annotate_episode(policy: Any, ep: EpisodeFrames, *, batch_size: int, device: torch.device,
                     embedding: str = "quantized") -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[T, Q]`` int64 and embeddings ``[T, Q, D]`` float32 of every step."""
    t_idx, f_idx = ep.pair_indices()
    ids, embs = [], []
    for s in range(0, len(t_idx), batch_size):
        x_t = ep.frames[t_idx[s : s + batch_size]].to(device)
        x_f = ep.frames[f_idx[s : s + batch_size]].to(device)
        lat = policy.annotate(x_t, x_f)
        ids.append(lat.ids.cpu())
        embs.append((lat.quantized if embedding == "quantized" else lat.continuous).float().cpu())
    return torch.cat(ids).numpy().astype(np.int64), torch.cat(embs).numpy()


def _data_config(spec: str, ckpt_data: Any, split: str | None, name: str | None, stride: int) -> Any:
    """The DataConfig to annotate: a recipe's mixture or a single dataset dir, at the LAM's image size."""
    from lavla.data_service.config import DatasetEntry, SyntheticDataConfig
    from lavla.trainer.config_io import load_config

    path = Path(spec)
    if path.is_file():
        data = load_config(["--config", str(path)]).data
        entries = [dataclasses.replace(e, split=split) if split else e for e in data.datasets]
    elif path.is_dir():
        data = ckpt_data
        entries = [dataclasses.replace(data.datasets[0] if data.datasets else DatasetEntry(),
                                       name=name or path.parent.name, path=str(path), split=split or "train", weight=1.0)]
    else:
        raise FileNotFoundError(f"--data {spec}: neither a YAML recipe nor a dataset directory")
    if data.image_size != ckpt_data.image_size:
        log.warning("decoding at the LAM's image size %d (the data config says %d)", ckpt_data.image_size, data.image_size)
    return dataclasses.replace(data, datasets=entries, image_size=ckpt_data.image_size, synthetic=SyntheticDataConfig(),
                               lam_stride=stride if stride > 0 else data.lam_stride)


def _check_store_compatible(path: Path, splits: dict[str, str], embedding: str) -> None:
    """Episodes are keyed by their index within a split, so one store holds one split per dataset."""
    if not (path / "zarr.json").exists():
        return
    from lavla.data_service.latents.store import LatentStore

    meta = LatentStore(path).metadata
    clash = {n: (meta["splits"][n], s) for n, s in splits.items() if n in meta.get("splits", {}) and meta["splits"][n] != s}
    if clash:
        raise ValueError(f"{path} holds other splits of {sorted(clash)} ({clash}); episode indices would collide: "
                         "write each split to its own store")
    if meta.get("embedding", embedding) != embedding:
        raise ValueError(f"{path} holds {meta['embedding']} embeddings, not {embedding}")


def iter_episodes(sources: list[Any], num_shards: int, shard_index: int) -> Iterator[tuple[Any, int]]:
    """(source, episode) pairs of this shard (round-robin over the concatenated episode lists)."""
    k = 0
    for src in sources:
        for i in range(src.num_episodes):
            if k % num_shards == shard_index:
                yield src, i
            k += 1


def run(args: argparse.Namespace) -> dict[str, int]:
    from lavla.data_service.latents.store import LatentStoreWriter
    from lavla.data_service.sources import open_source
    from lavla.model.recipe import capabilities_of
    from lavla.trainer.export import load_checkpoint_model

    policy, cfg, ckpt = load_checkpoint_model(args.checkpoint)
    if not capabilities_of(policy).annotates:
        raise TypeError(f"{ckpt}: model type {type(policy).__name__} does not annotate latents; train a LAM recipe (type: lam*)")
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    policy.to(device)
    data_cfg = _data_config(args.data, cfg.data, args.split, args.dataset_name, args.stride)
    sources = [open_source(e, data_cfg) for e in data_cfg.datasets]

    blank = torch.zeros(1, 3, data_cfg.image_size, data_cfg.image_size, dtype=torch.uint8, device=device)
    shape = policy.annotate(blank, blank)  # Q and D of the store
    q_ids, q_emb = shape.ids, (shape.quantized if args.embedding == "quantized" else shape.continuous)
    splits = {e.name: e.split for e in data_cfg.datasets}
    _check_store_compatible(Path(args.out), splits, args.embedding)
    meta = {"checkpoint": str(ckpt.resolve()), "model_type": type(cfg.model).__name__, "embedding": args.embedding,
            "image_size": data_cfg.image_size, "num_codes": int(policy.quantizer().num_codes), "splits": splits,
            "strides": {s.name: int(data_cfg.lam_stride or s.spec.lam_stride) for s in sources}}
    writer = LatentStoreWriter(args.out, num_tokens=q_ids.shape[1], dim=q_emb.shape[2], metadata=meta)

    done = skipped = steps = 0
    t0 = time.perf_counter()
    for src, i in iter_episodes(sources, args.num_shards, args.shard_index):
        if not args.overwrite and writer.is_complete(src.name, i):
            skipped += 1
            continue
        ep = read_episode_frames(src, i, data_cfg)
        ids, emb = annotate_episode(policy, ep, batch_size=args.batch_size, device=device, embedding=args.embedding)
        writer.write_episode(src.name, i, ids, emb)
        done += 1
        steps += len(ids)
        if done % 50 == 0:
            log.info("%d episodes (%d steps) in %.0fs", done, steps, time.perf_counter() - t0)
    log.info("annotated %d episodes (%d steps), skipped %d already complete, into %s", done, steps, skipped, args.out)
    return {"episodes": done, "steps": steps, "skipped": skipped}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.annotate_latents", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir (newest complete checkpoint) or checkpoints/step_XXXXXXXX")
    p.add_argument("--data", required=True, help="YAML recipe (its data.datasets) or a dataset directory")
    p.add_argument("--out", required=True, help="latent store (.zarr directory; created or appended to)")
    p.add_argument("--split", default=None, help="split to annotate (default: the recipe's, or 'train' for a directory)")
    p.add_argument("--dataset-name", default=None, help="registry name for a dataset directory (default: its parent dir name)")
    p.add_argument("--stride", type=int, default=0, help="H override; 0 = each dataset's LAM stride")
    p.add_argument("--embedding", choices=EMBEDDINGS, default="quantized", help="what to store as embeddings")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--overwrite", action="store_true", help="re-annotate episodes already complete in the store")
    p.add_argument("--num-shards", type=int, default=1, help="split the episodes across this many processes")
    p.add_argument("--shard-index", type=int, default=0, help="this process's shard")
    a = p.parse_args(argv)
    if not 0 <= a.shard_index < a.num_shards:
        p.error(f"--shard-index must be in [0, {a.num_shards})")
    return a


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
