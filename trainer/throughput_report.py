"""The throughput report of a profiled window: Markdown table + PNG of the step-time breakdown."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from lavla.trainer.timing import PHASES

log = logging.getLogger(__name__)

_BREAKDOWN = (*PHASES, "other")


def _mean(steps: Sequence[Mapping[str, float]], key: str) -> float:
    return statistics.fmean(s.get(key, 0.0) for s in steps) if steps else 0.0


def write_report(out_dir: Path, steps: Sequence[Mapping[str, float]], summary: Mapping[str, Any],
                 top_ops: str = "") -> tuple[Path, Path | None]:
    """Write ``throughput.md`` and ``step_breakdown.png`` (None if matplotlib is missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "throughput.md"
    md.write_text(render_markdown(steps, summary, top_ops))
    png = out_dir / "step_breakdown.png"
    try:
        plot_breakdown(steps, png)
    except ImportError:
        log.warning("matplotlib is not installed (pip install '.[dev]'); skipping %s", png)
        return md, None
    return md, png


def render_markdown(steps: Sequence[Mapping[str, float]], summary: Mapping[str, Any], top_ops: str) -> str:
    step_s = _mean(steps, "step")
    window = (f"Profiled steps {int(steps[0]['index'])}..{int(steps[-1]['index'])} ({len(steps)} steps)."
              if steps else "No steps profiled.")
    lines = [
        "# Throughput report",
        "",
        window,
        "",
        "## Step-time breakdown (mean per optimizer step)",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
    ]
    for p in _BREAKDOWN:
        v = _mean(steps, p)
        lines.append(f"| {p} | {v:.4f} | {100 * v / step_s if step_s else 0:.1f}% |")
    lines += [f"| **step** | **{step_s:.4f}** | 100% |", "", "## Throughput", "", "| metric | value |", "|---|---:|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {_fmt(v)} |")
    if top_ops:
        lines += ["", "## Top operators (rank 0, profiled window)", "", "```", top_ops.rstrip(), "```"]
    lines += ["", "Phases are wall-clock spans around the DeepSpeed engine calls, CUDA-synchronized in profiling runs;",
              "`other` is everything else in the step (metrics, hooks, checkpoints).", ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


def plot_breakdown(steps: Sequence[Mapping[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    xs = [int(s["index"]) for s in steps]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(xs) + 2), 3.5))
    bottom = [0.0] * len(xs)
    for p in _BREAKDOWN:
        vals = [s.get(p, 0.0) for s in steps]
        ax.bar(xs, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("seconds")
    ax.set_title("step-time breakdown")
    ax.set_xticks(xs)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
