"""Benchmark the nearest-code lookup: fused Triton kernel vs chunked reference vs naive cdist.

    python -m lavla.kernels.bench [--n 1048576] [--d 128] [--k 8 128 1024] [--dtype bf16]
                            [--warmup 3] [--repeats 10] [--out bench/results/....json]

For every K it reports, per method, the median time (CUDA events after warmup; wall clock on CPU),
the peak memory allocated during the call (``torch.cuda.max_memory_allocated``, reset before each
method; total and above the resident inputs), speed and memory ratios against the naive baseline,
index agreement with the fp32 reference, and the analytic lower bound on memory (inputs + outputs).
The fused kernel's achieved TFLOP/s (2NKD) and effective bandwidth over the lower-bound bytes are
included for roofline comparisons (see ../shared/anchors/infra.md section 4).

Without CUDA it still runs: N is scaled down (``--cpu-n``), the fused kernel is skipped (the Triton
interpreter's speed means nothing), memory is not measured, and the output says so. Results go to a
JSON file with the device name, torch/triton versions, date and git commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from lavla.kernels import codebook as cbk
from lavla.trainer.provenance import provenance

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _triton_version() -> Optional[str]:
    if not cbk.HAS_TRITON:
        return None
    import triton

    return triton.__version__


def lower_bound_bytes(n: int, k: int, d: int, z_dtype: torch.dtype, cb_dtype: torch.dtype) -> Dict[str, int]:
    """Bytes that any implementation must hold: inputs (z, codebook) and outputs (ids, q, sq_err)."""
    ez = torch.empty((), dtype=z_dtype).element_size()
    ec = torch.empty((), dtype=cb_dtype).element_size()
    inputs = n * d * ez + k * d * ec
    outputs = n * 8 + n * d * ec + n * 4
    return {"inputs": inputs, "outputs": outputs, "total": inputs + outputs}


def _time_cuda(fn: Callable[[], object], warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _time_cpu(fn: Callable[[], object], warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _peak_cuda(fn: Callable[[], object]) -> Dict[str, int]:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return {"peak_bytes": int(peak), "peak_extra_bytes": int(peak - base)}


def run_one_k(
    n: int, k: int, d: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int, seed: int
) -> Dict[str, object]:
    gen = torch.Generator(device=device).manual_seed(seed + k)
    z = torch.randn(n, d, device=device, generator=gen).to(dtype)
    codebook = torch.randn(k, d, device=device, generator=gen).to(dtype)
    on_cuda = device.type == "cuda"
    methods: Dict[str, Optional[Callable[[], object]]] = {
        "fused": (lambda: cbk.nearest_code_triton(z, codebook)) if on_cuda and cbk.HAS_TRITON else None,
        "reference": lambda: cbk.nearest_code_reference(z, codebook),
        "naive": lambda: cbk.nearest_code_naive(z, codebook),
    }
    ref_ids = cbk.nearest_code_reference(z, codebook).ids
    lb = lower_bound_bytes(n, k, d, dtype, dtype)
    flops = 2.0 * n * k * d
    rows: Dict[str, Dict[str, object]] = {}
    for name, fn in methods.items():
        if fn is None:
            reason = "triton not installed" if on_cuda else "no CUDA device (interpreter timings are meaningless)"
            rows[name] = {"skipped": reason}
            continue
        try:
            times = (_time_cuda if on_cuda else _time_cpu)(fn, warmup, repeats)
            row: Dict[str, object] = {
                "median_ms": statistics.median(times),
                "min_ms": min(times),
                "times_ms": times,
            }
            if on_cuda:
                row.update(_peak_cuda(fn))
            ids = fn().ids
            row["index_agreement_vs_reference"] = (ids == ref_ids).float().mean().item()
            del ids
            sec = row["median_ms"] / 1e3
            row["tflops"] = flops / sec / 1e12
            row["effective_gbps_lower_bound_bytes"] = lb["total"] / sec / 1e9
        except torch.cuda.OutOfMemoryError as exc:  # the naive path can OOM at large N*K
            row = {"skipped": f"out of memory: {str(exc).splitlines()[0]}"}
            torch.cuda.empty_cache()
        rows[name] = row
    naive = rows.get("naive", {})
    for name, row in rows.items():
        if "median_ms" in row and "median_ms" in naive:
            row["speedup_vs_naive"] = naive["median_ms"] / row["median_ms"]
        if "peak_extra_bytes" in row and "peak_extra_bytes" in naive and naive["peak_extra_bytes"]:
            row["peak_extra_ratio_vs_naive"] = row["peak_extra_bytes"] / naive["peak_extra_bytes"]
    del z, codebook, ref_ids
    if on_cuda:
        torch.cuda.empty_cache()
    return {"k": k, "flops": flops, "lower_bound_bytes": lb, "methods": rows}


def _mib(x: Optional[int]) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def _print_result(res: Dict[str, object]) -> None:
    lb = res["lower_bound_bytes"]
    print(
        f"\nK={res['k']}: lower bound {_mib(lb['total'])} MiB "
        f"(inputs {_mib(lb['inputs'])} + outputs {_mib(lb['outputs'])}), {res['flops'] / 1e9:,.1f} GFLOP"
    )
    print(f"  {'method':<10}{'median ms':>11}{'vs naive':>10}{'peak MiB':>11}{'extra MiB':>11}"
          f"{'mem/naive':>10}{'agree':>9}{'TFLOP/s':>9}{'GB/s*':>8}")  # fmt: skip
    for name, row in res["methods"].items():
        if "skipped" in row:
            print(f"  {name:<10} skipped: {row['skipped']}")
            continue
        speed = row.get("speedup_vs_naive")
        ratio = row.get("peak_extra_ratio_vs_naive")
        print(
            f"  {name:<10}{row['median_ms']:>11.3f}{(f'{speed:.2f}x' if speed else '-'):>10}"
            f"{_mib(row.get('peak_bytes')):>11}{_mib(row.get('peak_extra_bytes')):>11}"
            f"{(f'{ratio:.3f}' if ratio is not None else '-'):>10}"
            f"{row['index_agreement_vs_reference']:>9.5f}{row['tflops']:>9.2f}"
            f"{row['effective_gbps_lower_bound_bytes']:>8.0f}"
        )


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    p = argparse.ArgumentParser(prog="python -m lavla.kernels.bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1 << 20, help="rows of z (tokens)")
    p.add_argument("--d", type=int, default=128, help="code dimension")
    p.add_argument("--k", type=int, nargs="+", default=[8, 128, 1024], help="codebook sizes")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of z and the codebook")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cpu-n", type=int, default=8192, help="N used instead of --n when there is no CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/codebook_<dev>_<date>.json)")
    args = p.parse_args(argv)

    on_cuda = torch.cuda.is_available()
    device = torch.device("cuda") if on_cuda else torch.device("cpu")
    dtype = DTYPES[args.dtype]
    n = args.n
    note = None
    if on_cuda:
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads)"
        if n > args.cpu_n:
            n = args.cpu_n
        note = (
            f"NO CUDA DEVICE: CPU run with N scaled down from {args.n} to {n}; fused Triton kernel skipped; "
            "peak memory not measured; timings are CPU wall clock and say nothing about GPU performance."
        )
        print(note)
    if cbk.KERNEL_INTERPRETED:
        print("warning: TRITON_INTERPRET=1 -- the fused kernel runs in the interpreter; do not trust timings")
    now = _dt.datetime.now(_dt.timezone.utc)
    print(
        f"nearest_code benchmark on {dev_name}: N={n} D={args.d} K={args.k} dtype={args.dtype} "
        f"warmup={args.warmup} repeats={args.repeats} (torch {torch.__version__}, triton {_triton_version()})"
    )
    results = [run_one_k(n, k, args.d, dtype, device, args.warmup, args.repeats, args.seed) for k in args.k]
    for res in results:
        _print_result(res)
    print("\n  extra = peak minus memory resident before the call; GB/s* = lower-bound bytes / time")

    record = {
        "benchmark": "kernels.codebook.nearest_code",
        "device": dev_name,
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "triton_interpreted": cbk.KERNEL_INTERPRETED,
        **provenance("lavla.kernels.bench", argv),
        "n_requested": args.n,
        "n": n,
        "d": args.d,
        "dtype": args.dtype,
        "scaled_down": n != args.n,
        "note": note,
        "results": results,
    }
    out = args.out
    if out is None:
        slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")
        out = REPO_ROOT / "bench" / "results" / f"codebook_{slug}_{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
