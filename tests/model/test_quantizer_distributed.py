"""Cross-rank quantizer statistics with two real processes on gloo (through the trainer's QuantizerHooks)."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
from dist_workers import KINDS, make_quantizer, quantizer_worker, rank_batches


def test_two_ranks_share_usage_ema_statistics_and_restarts(tmp_path):
    mp.spawn(quantizer_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for kind in KINDS:
        a, b = r0[kind], r1[kind]
        for phase in ("pre", "post"):  # identical state on both ranks, before and after the (unbroadcast) restart
            assert a[phase].keys() == b[phase].keys()
            for key in a[phase]:
                torch.testing.assert_close(a[phase][key], b[phase][key], rtol=0, atol=0, msg=f"{kind} {phase} {key}")
        assert a["restarted"] == b["restarted"] > 0 and a["active"] == b["active"]

        # The reduced statistics equal one process seeing both ranks' data: usage is global, and
        # the EMA codebook moved by the summed cluster statistics.
        ref = make_quantizer(kind)
        for z0, z1 in zip(rank_batches(0), rank_batches(1)):
            ref(torch.cat([z0, z1]))
        assert torch.equal(ref.usage_total, a["pre"]["usage_total"]), kind
        assert a["pre"]["usage_total"].sum() == 2 * 3 * 16
        if kind == "ema":
            torch.testing.assert_close(ref.codebook, a["pre"]["codebook"])
            torch.testing.assert_close(ref.cluster_size, a["pre"]["cluster_size"])
    # Each rank's data sits in its own cluster: only the global count sees both.
    assert r0["st"]["active"][0] == 2
    assert r0["batch_refused"] and r1["batch_refused"]
