"""Non-finite step skipping: decisions, poisoning, the consecutive limit and its message."""

from __future__ import annotations

import pytest
import torch

from lavla.trainer.nonfinite import NonFiniteGuard, NonFiniteLossError, nonfinite_terms


def test_nonfinite_terms():
    m = {"loss": torch.tensor(float("nan")), "loss/flow": torch.tensor(float("inf")), "loss/ok": torch.tensor(1.0),
         "count": torch.tensor(3), "x": float("nan")}
    assert nonfinite_terms(m) == ["loss", "loss/flow", "x"]


def test_poisoned_loss_makes_every_gradient_nan():
    w = torch.nn.Parameter(torch.ones(3))
    loss = (w * 0).sum()  # gradient would be 0, not NaN, without the poison
    NonFiniteGuard.poison(loss).backward()
    assert torch.isnan(w.grad).all()


def test_guard_counts_skips_and_stops_with_terms_and_step():
    g = NonFiniteGuard(max_consecutive=2)
    g.begin_step()
    g.observe(torch.tensor(1.0))
    assert not g.any_rank_nonfinite()
    assert g.end_step(1, applied=True, loss_nonfinite=False, step_metrics=[]) is False

    g.begin_step()
    g.observe(torch.tensor(1.0))
    g.observe(torch.tensor(float("nan")))
    assert g.any_rank_nonfinite()
    bad = [{"loss": torch.tensor(float("nan")), "loss/flow": torch.tensor(float("nan")), "loss/lam": torch.tensor(0.1)}]
    assert g.end_step(2, applied=False, loss_nonfinite=True, step_metrics=bad) is True
    assert g.end_step(3, applied=True, loss_nonfinite=False, step_metrics=[]) is False  # resets the run
    assert g.end_step(4, applied=False, loss_nonfinite=False, step_metrics=[]) is True  # gradient-only skip
    with pytest.raises(NonFiniteLossError, match=r"step 5.*2 consecutive.*loss/flow") as e:
        g.end_step(5, applied=False, loss_nonfinite=True, step_metrics=bad)
    assert "loss/lam" not in str(e.value)
    assert g.pop_window() == {"nonfinite/skipped_steps": 3.0, "nonfinite/skipped_total": 3.0}


def test_applied_update_despite_nonfinite_loss_is_an_error():
    g = NonFiniteGuard(max_consecutive=5)
    with pytest.raises(RuntimeError, match="applied the update"):
        g.end_step(1, applied=True, loss_nonfinite=True, step_metrics=[])
