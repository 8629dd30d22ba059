"""MFU and peak memory of a recipe at full size, on random weights and random batches.

    python -m lavla.trainer.bench_mfu --recipe lara --full-size [--micro-batch 8] [--steps 10] [--out bench/results/x.json]
    deepspeed --num_gpus 8 trainer/bench_mfu.py --recipe lara --full-size      (ZeRO-3 across 8 GPUs)
    python -m lavla.trainer.bench_mfu --recipe baseline --full-size --flops-only --micro-batch 1   (FLOPs only, CPU)

Builds the recipe's module exactly as training does (``trainer.engine.build_engine``: one
DeepSpeed engine, frozen towers frozen, optional activation checkpointing), feeds batches of the
data schema's shapes drawn at random (no dataset needed), and reports measured FLOPs per step
(FlopCounterMode on a real step), step time, samples/s, TFLOP/s per device, MFU and peak memory
as one JSON object. Without ``--full-size`` the recipe's own (tiny) sizes are used, which is how
it is smoke-tested on CPU. Extra ``--a.b=value`` flags override any config field.

Full-size presets follow the reference models (../shared/anchors/models.md): the VL backbone
stand-in at the width and depth of the Eagle/Qwen3-VL layers GR00T keeps (2048 wide, 12 layers,
frozen), the Moto LAM (frozen ViT-MAE-Large-sized frame encoder at 224 px / patch 16, M-Former
768 x 4, decoder 768 x 12) and the GR00T N1.5 flow-matching DiT (1536 = 32 x 48, 16 blocks).
The backbone and encoder are this repo's stand-in modules at those sizes, not the pretrained
ones, so FLOPs match the architecture class, not the checkpoint byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run by path (``deepspeed trainer/bench_mfu.py``), Python puts the script's own folder first on sys.path,
    # where a module of ours (evaluate.py, profiling.py) would shadow an installed package of that name. The
    # project imports only as ``lavla.*``, so the entry goes.
    _HERE = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import torch

FULL_SIZE_DIR = Path(__file__).resolve().parents[1] / "configs" / "full"
"""Full-size presets: ``configs/full/<model.type>.yaml``, the configs users train at full size."""

FULL_SIZE: dict[str, Path] = {p.stem: p for p in sorted(FULL_SIZE_DIR.glob("*.yaml"))}
"""model.type -> its full-size preset (recipes without one need explicit ``--model.*`` overrides)."""

ARCHITECTURE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "models"
"""Where weight-less full-size architectures are written (``model.hf_architecture``)."""


def full_size_overrides(recipe: str, arch_dir: Path = ARCHITECTURE_DIR, backbone_size: str = "qwen3-vl-2b") -> list[str]:
    """``--config configs/full/<recipe>.yaml``, with a Hugging Face backbone pointed at a weight-less
    architecture of the same model (written on first use): random weights at the real sizes, offline.
    ``backbone_size``: which Qwen3-VL (``model.hf_architecture.ARCHITECTURES``; the 8B is the 7B-class
    shape, whose text stack ``parallel.tensor_parallel_size`` shards)."""
    if recipe not in FULL_SIZE:
        return []
    import yaml

    args = ["--config", str(FULL_SIZE[recipe])]
    backbone = (yaml.safe_load(FULL_SIZE[recipe].read_text())["model"].get("backbone") or {})
    if backbone.get("kind") == "hf":
        from lavla.model.hf_architecture import write_qwen3_vl_architecture

        slug = backbone_size.replace("-", "_")
        path = write_qwen3_vl_architecture(arch_dir / f"{slug}_instruct_architecture", backbone_size)
        args += [f"--model.backbone.hf.pretrained_path={path}", "--model.backbone.hf.load_weights=false"]
    return args

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def random_batch(cfg: Any, batch_size: int, device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """A batch with the data schema's keys and this config's shapes (data_service/schema.py)."""
    d = cfg.data
    h = d.image_size
    n, a, p = d.action_horizon, d.max_action_dim, d.max_proprio_dim

    def img() -> torch.Tensor:
        return torch.randint(0, 256, (batch_size, 3, h, h), dtype=torch.uint8, generator=generator)

    num_embodiments = getattr(getattr(cfg.model, "head", None), "num_embodiments", 1)
    batch = {
        "sample_id": torch.arange(batch_size),
        "image_primary": img(), "image_future": img(), "image_wrist": img(),
        "has_wrist": torch.ones(batch_size, dtype=torch.bool),
        "proprio": torch.randn(batch_size, p, generator=generator),
        "proprio_dim_mask": torch.ones(batch_size, p, dtype=torch.bool),
        "action": torch.randn(batch_size, n, a, generator=generator),
        "action_valid": torch.ones(batch_size, n, dtype=torch.bool),
        "action_dim_mask": torch.ones(batch_size, a, dtype=torch.bool),
        "has_action": torch.ones(batch_size, dtype=torch.bool),
        "embodiment_id": torch.randint(0, num_embodiments, (batch_size,), generator=generator),
        "dataset_id": torch.zeros(batch_size, dtype=torch.long),
    }
    out: dict[str, Any] = {k: v.to(device) for k, v in batch.items()}
    out["language"] = ["pick up the red block and place it in the bowl"] * batch_size
    return out


def bench(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m lavla.trainer.bench_mfu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="lara", help="model.type to benchmark")
    parser.add_argument("--full-size", action="store_true", help="apply the recipe's full-size preset")
    parser.add_argument("--backbone", default="qwen3-vl-2b", choices=["qwen3-vl-2b", "qwen3-vl-8b"],
                        help="with --full-size, the Hugging Face backbone's size (recipes with backbone.kind=hf)")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--config", default=str(QUICKSTART), help="base recipe YAML")
    parser.add_argument("--out", default="", help="also write the result JSON here")
    parser.add_argument("--flops-only", action="store_true",
                        help="count the FLOPs of one forward + backward of the bare model (no DeepSpeed, no "
                             "optimizer, no timing): the device-independent part, affordable on a CPU")
    args, overrides = parser.parse_known_args(argv)
    overrides = [a for a in overrides if not a.startswith("--local_rank")]
    if args.flops_only:
        return _flops_only(args, overrides, argv)

    from lavla.trainer import distributed as dist_utils
    from lavla.trainer.engine import build_engine
    from lavla.trainer.flops import count_flops, device_peak_flops, forward_flops_by_child
    from lavla.trainer.provenance import provenance
    from lavla.trainer.timing import peak_memory_gib

    dist_utils.init_distributed()
    world = dist_utils.world_size()
    cfg = _recipe_config(args, [f"--trainer.micro_batch_size={args.micro_batch}",
                                f"--trainer.global_batch_size={args.micro_batch * world}",
                                f"--trainer.precision={args.precision}", "--trainer.max_steps=1000000",
                                *overrides])
    engine, _ = build_engine(cfg, world)
    engine.train()
    gen = torch.Generator().manual_seed(dist_utils.rank())
    cuda = torch.cuda.is_available()

    def step(measure: bool = False) -> int:
        batch = random_batch(cfg, args.micro_batch, engine.device, gen)
        flops = 0
        if measure:
            with count_flops() as counted:
                loss, _ = engine(batch)
                engine.backward(loss)
            flops = counted().total
        else:
            loss, _ = engine(batch)
            engine.backward(loss)
        engine.step()
        return flops

    flops_per_step = step(measure=True)
    probe = random_batch(cfg, args.micro_batch, engine.device, gen)
    forward_split = forward_flops_by_child(engine.module, lambda: engine(probe))
    for _ in range(max(0, args.warmup - 1)):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / max(1, args.steps)
    device, peak = device_peak_flops(cfg.logging.peak_tflops)
    n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())
    n_train = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters() if p.requires_grad)
    result = {
        "recipe": args.recipe, "full_size": args.full_size, "backbone": args.backbone if args.full_size else None,
        "device": device, "world_size": world,
        "precision": args.precision, "micro_batch": args.micro_batch,
        "activation_checkpointing": cfg.trainer.activation_checkpointing,
        "params": n_params, "trainable_params": n_train,
        "flops_per_step_per_device": flops_per_step, "flops_per_sample": flops_per_step / args.micro_batch,
        "forward_flops_by_module": forward_split, "step_s": seconds,
        "samples_per_s": args.micro_batch * world / seconds,
        "tflops_per_device": flops_per_step / seconds / 1e12,
        "mfu": flops_per_step / seconds / peak if peak else None,
        **peak_memory_gib(reset=False),
        "torch": torch.__version__, **provenance("lavla.trainer.bench_mfu", argv),
    }
    if dist_utils.is_main():
        _report(result, args.out)
    return result


def _recipe_config(args: argparse.Namespace, overrides: list[str]) -> Any:
    """The base YAML switched to ``--recipe``, its full-size preset if asked, no synthetic data."""
    from lavla.trainer.config_io import load_config

    if args.full_size and args.recipe not in FULL_SIZE:
        raise SystemExit(f"no full-size preset configs/full/{args.recipe}.yaml; pass --model.* overrides instead")
    base = full_size_overrides(args.recipe, backbone_size=args.backbone) if args.full_size else ["--config", args.config, f"--model.type={args.recipe}"]
    return load_config([*base, "--data.synthetic.enabled=false", *overrides])


def _report(result: dict[str, Any], out: str) -> None:
    print(json.dumps(result, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def _flops_only(args: argparse.Namespace, overrides: list[str], argv: list[str]) -> dict[str, Any]:
    from lavla.model.factory import build_model
    from lavla.trainer.flops import count_flops, forward_flops_by_child
    from lavla.trainer.provenance import provenance

    cfg = _recipe_config(args, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data).train()
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(cfg, args.micro_batch, torch.device("cpu"), gen)
    with count_flops() as counted:
        loss, _ = model(batch)
        loss.backward()
    total = counted().total
    result = {
        "recipe": args.recipe, "full_size": args.full_size, "micro_batch": args.micro_batch,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_step": total, "flops_per_sample": total / args.micro_batch,
        "forward_flops_by_module": forward_flops_by_child(model, lambda: model(batch)),
        "torch": torch.__version__, **provenance("lavla.trainer.bench_mfu", argv),
    }
    _report(result, args.out)
    return result


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bench(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
