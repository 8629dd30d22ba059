"""The DiT action head on megatron's column/row-parallel linears: TP=2 equal to TP=1 (outputs,
hidden states, gradients), exact consolidation, and dropout consistent across TP ranks and under
activation checkpointing, on gloo."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from tp_dit_workers import DIM, dit_worker, tiny_dit

from lavla.model.layers import MultiHeadAttention
from lavla.trainer.tensor_parallel.dit import TPMultiHeadAttention, consolidate_dit_state, parallelize_dit

EXACT = {"rtol": 0, "atol": 0}
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp_dit")
    mp.spawn(dit_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_forward_and_hidden_states_equal_tp1(ranks):
    for res in ranks:
        assert res["replaced"] == 4  # block 0: cross-attention + MLP, block 1: self-attention + MLP
        ref, tp = res["ref"], res["tp"]
        torch.testing.assert_close(tp["out"], ref["out"], **CLOSE)
        assert len(tp["hidden"]) == len(ref["hidden"]) == 3
        for i, (a, b) in enumerate(zip(tp["hidden"], ref["hidden"])):
            torch.testing.assert_close(a, b, **CLOSE, msg=f"hidden state {i}")


@pytest.mark.slow
def test_gradients_are_complete_for_replicated_and_sharded_params(ranks):
    ref_grads = ranks[0]["ref"]["grads"]
    sharded = set(ranks[0]["sharded"])
    # Column-parallel weights and biases, row-parallel weights; row-parallel biases are replicated.
    assert sharded == {f"blocks.{i}.{attn}.{lin}.{p}" for i, attn in ((0, "cross_attn"), (1, "self_attn"))
                       for lin in ("q", "kv") for p in ("weight", "bias")} | {
        f"blocks.{i}.{attn}.out.weight" for i, attn in ((0, "cross_attn"), (1, "self_attn"))} | {
        f"blocks.{i}.mlp.{lin}" for i in (0, 1) for lin in ("fc1.weight", "fc1.bias", "fc2.weight")}
    for res in ranks:  # replicated: the full TP=1 gradient on every rank, not a partial sum
        assert res["tp"]["grads"].keys() == ref_grads.keys()
        for name, grad in res["tp"]["grads"].items():
            if name not in sharded:
                torch.testing.assert_close(grad, ref_grads[name], **CLOSE, msg=name)
        torch.testing.assert_close(res["tp"]["context_grad"], res["ref"]["context_grad"], **CLOSE)
    # Sharded: each rank's gradient is its shard of the TP=1 gradient.
    rank1 = ranks[1]["tp"]["grads"]["blocks.0.cross_attn.kv.weight"]  # [K heads 2-3; V heads 2-3]
    k, v = ref_grads["blocks.0.cross_attn.kv.weight"].chunk(2)
    torch.testing.assert_close(rank1, torch.cat([k[DIM // 2:], v[DIM // 2:]]), **CLOSE)
    whole = consolidate_dit_state([r["tp"]["grads"] for r in ranks])
    for name in sharded:
        torch.testing.assert_close(whole[name], ref_grads[name], **CLOSE, msg=name)


@pytest.mark.slow
def test_consolidated_state_equals_tp1_state_exactly(ranks):
    ref = ranks[0]["ref_state"]
    assert any(k.endswith("_extra_state") for k in ranks[0]["tp_state"])
    q1 = ranks[1]["tp_state"]["blocks.1.self_attn.q.weight"]
    assert q1.shape == (DIM // 2, DIM) and torch.equal(q1, ref["blocks.1.self_attn.q.weight"][DIM // 2:])
    whole = consolidate_dit_state([r["tp_state"] for r in ranks])
    assert list(whole) == list(ref)
    for key in ref:
        assert torch.equal(whole[key], ref[key]), key


@pytest.mark.slow
def test_dropout_agrees_across_tp_ranks_and_under_recompute(ranks):
    r0, r1 = ranks
    # Same default stream on both ranks: the replicated activations and gradients stay identical.
    torch.testing.assert_close(r0["dropout"]["out"], r1["dropout"]["out"], **EXACT)
    sharded = set(r0["sharded"])
    for name, grad in r0["dropout"]["grads"].items():
        if name not in sharded:
            torch.testing.assert_close(grad, r1["dropout"]["grads"][name], **CLOSE, msg=name)
    assert not torch.allclose(r0["dropout"]["out"], r0["dropout_eval"]["out"])  # dropout did drop
    # Checkpointed blocks recompute with the same masks: same output and gradients.
    for res in ranks:
        torch.testing.assert_close(res["dropout_recomputed"]["out"], res["dropout"]["out"], **EXACT)
        for name, grad in res["dropout"]["grads"].items():
            torch.testing.assert_close(res["dropout_recomputed"]["grads"][name], grad, **CLOSE, msg=name)


def test_tp_must_divide_the_heads():
    with pytest.raises(ValueError, match="tensor parallel size 3 must divide the DiT's 4 attention heads"):
        TPMultiHeadAttention(MultiHeadAttention(DIM, 4), 0, 3)
    dit = tiny_dit()
    with pytest.raises(ValueError, match="must divide"):
        parallelize_dit(dit, 0, 8)
    assert isinstance(dit.blocks[0].cross_attn, MultiHeadAttention)  # checked before replacing anything
