"""Throughput arithmetic, FLOPs / peak lookup, step timing, metric aggregation and console line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lavla.trainer.flops import count_flops, peak_flops_for
from lavla.trainer.metrics import MetricAccumulator, format_console
from lavla.trainer.throughput import ThroughputModel, tokens_per_sample
from lavla.trainer.timing import PHASES, StepTimer, peak_memory_gib


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12), ("NVIDIA B200", 2.25e15), ("Tesla T4", None),
])
def test_peak_flops_table(name, peak):
    assert peak_flops_for(name) == peak


def test_flop_counter_counts_a_linear_forward_backward():
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    with count_flops() as flops:
        lin(x).sum().backward()
    assert flops().total == 3 * 2 * 8 * 64 * 32  # forward, grad input, grad weight


def test_frozen_layers_cost_a_forward_only():
    frozen, trained = nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)
    frozen.requires_grad_(False)
    one = 2 * 8 * 64 * 64  # one matmul's FLOPs
    with count_flops() as flops:
        trained(frozen(torch.randn(8, 64))).sum().backward()
    assert flops().total == 3 * one  # frozen tower first: forward only, no backward at all
    with count_flops() as flops:
        frozen(trained(torch.randn(8, 64))).sum().backward()
    # frozen after a trained layer: 2 forwards + its grad input + the trained weight grad, no frozen weight grad
    assert flops().total == 4 * one


def test_rates_and_mfu():
    tm = ThroughputModel(global_batch_size=32, world_size=4, grad_accum=2, flops_per_micro_step=10**12, peak_flops=1e15)
    r = tm.rates(steps=5, seconds=10.0, tokens_per_sample=100.0)
    assert r["samples_per_s"] == 16.0 and r["tokens_per_s"] == 1600.0
    assert r["tflops"] == pytest.approx(1.0)  # 1e12 x 2 accum x 5 steps / 10 s, per device
    assert r["mfu"] == pytest.approx(1e-3)
    assert r["flops_per_step"] == 8e12
    cpu = ThroughputModel(8, 1, 1, flops_per_micro_step=10**9).rates(1, 1.0, 1.0)
    assert cpu["tflops"] == pytest.approx(1e-3) and cpu["mfu"] is None


def test_tokens_per_sample_sources():
    m = nn.Linear(1, 1)
    assert tokens_per_sample(m, {"tokens": 400.0}, micro_batch_size=4) == 100.0
    assert tokens_per_sample(m, {}, 4) == 1.0
    m.tokens_per_sample = 77
    assert tokens_per_sample(m, {}, 4) == 77.0


def test_step_timer_breakdown():
    t = StepTimer()
    with t.phase("forward"):
        sum(range(10000))
    step = t.end_step()
    assert set(step) == {*PHASES, "other", "step"}
    assert step["step"] >= step["forward"] > 0 and step["data"] == 0
    t.end_step()
    w = t.pop_window(2)
    assert w["time/step_s"] == pytest.approx(w["time/window_s"] / 2)
    assert peak_memory_gib()["memory/max_rss_gib"] > 0


def test_paused_time_belongs_to_no_step():
    import time

    t = StepTimer()
    t.end_step()
    with t.paused():
        time.sleep(0.2)
    with t.phase("forward"):
        time.sleep(0.01)
    step = t.end_step()
    assert 0.01 <= step["step"] < 0.15 and step["other"] < 0.1


def test_accumulator_means_and_console_without_loss():
    acc = MetricAccumulator()
    acc.add({"loss": torch.tensor(1.0), "loss/a": 2.0})
    acc.add({"loss": torch.tensor(3.0), "loss/a": 4.0})
    assert acc.reduce() == {"loss": 2.0, "loss/a": 3.0}
    line = format_console({"step": 3, "lr": 1e-3, "samples_per_s": 5.0, "tflops": 1.5, "mfu": 0.4,
                           "nonfinite/skipped_steps": 1.0})
    assert "MFU 40.0%" in line and "skipped 1" in line and "loss" not in line
