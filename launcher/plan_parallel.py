"""``lavla-plan-parallel``: which TP x DP x ZeRO layout to use for a model on N GPUs, and why.

    lavla-plan-parallel --model lwm-7b --gpus 8 [--gpu-memory 80] [--micro-batch 8] [--seq 320]

Prints every layout's per-GPU memory (model states, activations) and bytes sent per step, and the
recommendation with its reasons (``trainer.parallel_plan`` states the formulas). Estimates, not
measurements: check the chosen layout with ``python -m lavla.trainer.bench_mfu``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lavla.trainer.parallel_plan import SHAPES, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lavla-plan-parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(SHAPES), required=True, help="model shape (qwen3-vl-2b: the "
                   "Pixels-to-Tokens baseline at full size; lwm-7b: LAPA's 7B backbone)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    p.add_argument("--gpus-per-node", type=int, default=8, help="TP stays inside a node (default 8)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80: H100)")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per GPU per micro step")
    p.add_argument("--seq", type=int, default=0, help="tokens per sample (default: the model's)")
    a = p.parse_args(argv)
    if min(a.gpus, a.gpus_per_node, a.micro_batch) < 1 or a.gpu_memory <= 0 or a.seq < 0:
        print("error: --gpus, --gpus-per-node and --micro-batch must be >= 1, --gpu-memory > 0", file=sys.stderr)
        return 2
    shape = SHAPES[a.model] if not a.seq else dataclasses.replace(SHAPES[a.model], seq=a.seq)
    print(report(shape, a.gpus, a.gpu_memory, a.micro_batch, min(a.gpus_per_node, a.gpus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
