"""The last lines a run prints: held-out figures when it evaluated, and the commands to go on."""

from __future__ import annotations

from lavla.trainer.run_summary import closing_message


def test_a_run_that_evaluated_reports_what_the_model_can_do() -> None:
    last = {"step": 300, "loss": 0.9, "eval/num_samples": 64.0, "eval/action/l1": 0.7089,
            "eval/action/skill": -1.6465, "eval/action/image_swap_rel": 0.01124, "eval/action/language_swap_rel": 0.0140,
            "eval/probe/r2": 0.21, "eval/codebook/active_codes": 10.0}
    msg = closing_message({"step": 300, "exit_reason": "max_steps", "last": last}, "runs/quickstart")
    assert "finished: step 300 (max_steps), checkpoints in runs/quickstart/checkpoints" in msg
    assert "held-out (64 samples at step 300):" in msg
    assert "skill vs the median predictor (0 = a constant, 1 = exact): -1.65" in msg
    assert "actions moved by swapping images: 1.1% of the target spread" in msg
    assert "actions moved by swapping instructions: 1.4% of the target spread" in msg
    assert "LAM latent -> motion probe R^2: 0.21" in msg and "LAM codes in use: 10" in msg
    assert "python -m lavla.launcher.evaluate --checkpoint runs/quickstart" in msg
    assert "python -m lavla.launcher.rollout --policy runs/quickstart/export --episodes 50" in msg


def test_a_run_without_evaluation_or_actions_says_so() -> None:
    msg = closing_message({"step": 20, "exit_reason": "max_steps", "last": {"step": 20, "loss": 1.0}}, "r", acts=False)
    assert "no held-out evaluation in this run (eval.every_steps: 0)" in msg
    assert "export_policy r --out r/export" in msg and "rollout" not in msg
