"""The miniature study's results as tables: mean ± std over seeds, success pooled over seeds with
Wilson intervals, one markdown table per part (``results.md``) and the records (``results.json``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Metrics the table shows, in order, and how they are labelled.
TABLE_METRICS = {
    "action/l1": "held-out action L1 (normalized)",
    "success_rate": "closed-loop success",
    "probe/r2": "LAM probe R²",
    "latent/token_acc": "latent-token accuracy",
}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def aggregate(records: list[dict[str, Any]], metrics: Iterable[str] = tuple(TABLE_METRICS)) -> list[dict[str, Any]]:
    """One row per (part, group), in first-seen order: for each metric, mean / std / n over the seeds
    that report a finite value (absent metrics stay absent)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        row = rows.setdefault((rec["part"], rec["group"]), {"part": rec["part"], "group": rec["group"],
                                                             "config": rec["config"], "seeds": [], "metrics": {}})
        row["seeds"].append(rec["seed"])
    for (part, group), row in rows.items():
        pooled: dict[str, list[int]] = {}
        for r in records:
            if (r["part"], r["group"]) != (part, group):
                continue
            for k, v in r["metrics"].items():
                if "count/" in k and isinstance(v, list) and len(v) == 2:
                    acc = pooled.setdefault(k, [0, 0])
                    acc[0], acc[1] = acc[0] + int(v[0]), acc[1] + int(v[1])
        if pooled:
            row["pooled"] = pooled
        for m in metrics:
            vals = [float(r["metrics"][m]) for r in records if (r["part"], r["group"]) == (part, group)
                    and isinstance(r["metrics"].get(m), (int, float)) and math.isfinite(r["metrics"][m])]
            if vals:
                mu, sd = mean_std(vals)
                row["metrics"][m] = {"mean": mu, "std": sd, "n": len(vals)}
    return list(rows.values())


# The probe column is shown where the LAM differs between rows (elsewhere it is the frozen ``pre`` LAM's).
PROBE_PARTS = ("pre", "b")
PART_TITLES = {
    "pre": "Shared pretraining",
    "a": "(a) LAPA: latent pretraining then 10% labelled actions, vs scratch",
    "b": "(b) LARA vs its DiT-only ablation; LAM probe before (LAM alone) and after joint training",
    "c": "(c) Pixels-to-Tokens strategies at equal steps",
}


def fmt(cell: dict[str, Any] | None) -> str:
    return "–" if cell is None else f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def fmt_pooled(counts: list[int] | None) -> str:
    """``k/n = p% [lo, hi]``: successes pooled over seeds with their Wilson 95% interval."""
    if not counts or counts[1] <= 0:
        return "–"
    from lavla.data_service.envs.sim_env import wilson_interval

    k, n = counts
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def pooled_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Pooled-success columns of ``rows``: all tasks, each family (sorted), then the random floor."""
    keys = {k for r in rows for k in r.get("pooled", {})}
    fams = sorted(k for k in keys if k.startswith("count/") and k != "count/all")
    return [k for k in ["count/all", *fams, "random_floor/count/all"] if k in keys]


def pooled_label(key: str) -> str:
    if key == "count/all":
        return "success, pooled [95% CI]"
    if key == "random_floor/count/all":
        return "random floor"
    return key.split("/", 1)[1]


def render_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = ["# Miniature study on the synthetic world", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", ("Cells: mean ± sample std over seeds (n = number of seeds reporting). Held-out = the `val` split. "
                   "Success columns: episodes pooled over seeds, successes/episodes with the Wilson 95% interval, per "
                   "task family, and the random-action floor on the same scenes."), ""]
    for part in PART_TITLES:
        part_rows = [r for r in rows if r["part"] == part]
        if not part_rows:
            continue
        cols = [m for m in TABLE_METRICS if any(m in r["metrics"] for r in part_rows)
                and (m != "probe/r2" or part in PROBE_PARTS)]
        pcols = pooled_columns(part_rows)
        heads = [TABLE_METRICS[c] for c in cols] + [pooled_label(k) for k in pcols]
        lines += [f"## {PART_TITLES[part]}", "", "| run | config | seeds | " + " | ".join(heads)
                  + " |", "|---|---|---|" + "---|" * len(heads)]
        for r in part_rows:
            cells = [fmt(r["metrics"].get(c)) for c in cols] + [fmt_pooled(r.get("pooled", {}).get(k)) for k in pcols]
            lines.append(f"| {r['group']} | `{r['config']}` | {len(r['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(out: Path, records: list[dict[str, Any]], header: dict[str, Any]) -> tuple[Path, Path]:
    rows = aggregate(records)
    md, js = out / "results.md", out / "results.json"
    md.write_text(render_markdown(rows, header))
    js.write_text(json.dumps({**header, "table": rows, "runs": records}, indent=2, sort_keys=True))
    return md, js


# ---------------------------------------------------------------------------------------------------------------
