"""``lavla-plan-parallel``: which TP x DP x ZeRO layout to use for a model on N GPUs, and why.

    lavla-plan-parallel --model lwm-7b --gpus 8 [--gpu-memory 80] [--micro-batch 8] [--seq 320]
    lavla-plan-parallel --recipe configs/full/lara.yaml --gpus 8 --seq 300 [--set model.x=y ...]

``--recipe`` builds the recipe's model on the meta device where it can (no memory, no weights read;
else on the CPU; a Hugging Face backbone needs its config.json at ``backbone.hf.pretrained_path``)
and counts what tensor parallelism would shard in it.

Prints every layout's per-GPU memory (model states, activations) and bytes sent per step, and the
recommendation with its reasons (``trainer.parallel_plan`` states the formulas). Estimates, not
measurements: check the chosen layout with ``python -m lavla.trainer.bench_mfu``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lavla.trainer.parallel_plan import SHAPES, ModelShape, report, shape_of_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lavla-plan-parallel", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=sorted(SHAPES), help="a published model shape (qwen3-vl-2b: the "
                       "Pixels-to-Tokens baseline at full size; lwm-7b: LAPA's 7B backbone)")
    which.add_argument("--recipe", help="a pretraining YAML: plan for the model it builds")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override for --recipe (repeatable)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    p.add_argument("--gpus-per-node", type=int, default=8, help="TP stays inside a node (default 8)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80: H100)")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per GPU per micro step")
    p.add_argument("--seq", type=int, default=0, help="tokens per sample (default: the model's)")
    a = p.parse_args(argv)
    if min(a.gpus, a.gpus_per_node, a.micro_batch) < 1 or a.gpu_memory <= 0 or a.seq < 0:
        print("error: --gpus, --gpus-per-node and --micro-batch must be >= 1, --gpu-memory > 0", file=sys.stderr)
        return 2
    if a.recipe:
        shape = _recipe_shape(a.recipe, a.set, a.seq or 256)
    else:
        shape = SHAPES[a.model] if not a.seq else dataclasses.replace(SHAPES[a.model], seq=a.seq)
    print(report(shape, a.gpus, a.gpu_memory, a.micro_batch, min(a.gpus_per_node, a.gpus)))
    return 0


def _recipe_shape(path: str, overrides: list[str], seq: int) -> ModelShape:
    import torch

    from lavla.model.factory import build_model
    from lavla.trainer.config_io import load_config

    cfg = load_config(["--config", path, *[f"--{o}" for o in overrides]])
    hf = getattr(getattr(cfg.model, "backbone", None), "hf", None)
    if hf is not None:
        hf.load_weights = False  # shapes only: the architecture from config.json, nothing read
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, cfg.data)
    except (RuntimeError, NotImplementedError) as e:  # e.g. resizing embeddings samples from their statistics
        print(f"note: the model does not build on the meta device ({str(e).splitlines()[0]}); building it on the CPU",
              file=sys.stderr)
        model = build_model(cfg.model, cfg.data)
    return shape_of_model(model, f"{path} ({type(model).__name__}, {seq} tokens per sample)", seq)


if __name__ == "__main__":
    sys.exit(main())
