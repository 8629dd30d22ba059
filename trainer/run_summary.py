"""What a finished run prints last: what the model can do on held-out data, and what to run next."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (metric, label, as a percentage of the target spread)
HELD_OUT = (
    ("eval/action/l1", "action L1 (normalized)", False),
    ("eval/action/skill", "skill vs the median predictor (0 = a constant, 1 = exact)", False),
    ("eval/action/image_swap_rel", "actions moved by swapping images", True),
    ("eval/action/language_swap_rel", "actions moved by swapping instructions", True),
    ("eval/probe/r2", "LAM latent -> motion probe R^2", False),
    ("eval/codebook/active_codes", "LAM codes in use", False),
)


def closing_message(summary: Mapping[str, Any], run_dir: str | Path, acts: bool = True) -> str:
    """The held-out figures of the run's last evaluation (when it had one) and the commands that
    evaluate, export and (``acts``: a policy, not a LAM alone) roll out what it trained."""
    last = summary.get("last") or {}
    run = str(run_dir)
    lines = [f"finished: step {summary.get('step')} ({summary.get('exit_reason')}), checkpoints in {run}/checkpoints"]
    shown = [(label, last[key], pct) for key, label, pct in HELD_OUT if isinstance(last.get(key), (int, float))]
    if shown:
        lines.append(f"held-out ({last.get('eval/num_samples', '?'):g} samples at step {last.get('step')}):"
                     if isinstance(last.get("eval/num_samples"), (int, float)) else "held-out:")
        for label, value, pct in shown:
            lines.append(f"  {label}: " + (f"{100 * value:.1f}% of the target spread" if pct else f"{value:.3g}"))
    else:
        lines.append("no held-out evaluation in this run (eval.every_steps: 0); evaluate it with the first command")
    lines += ["next:", f"  python -m lavla.launcher.evaluate --checkpoint {run}   # the full held-out report",
              f"  python -m lavla.launcher.export_policy {run} --out {run}/export"]
    if acts:
        lines.append(f"  python -m lavla.launcher.rollout --policy {run}/export --episodes 50   # closed loop")
    return "\n".join(lines)
