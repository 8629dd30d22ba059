"""The Qwen3 text stack on megatron-core: exact conversion from Hugging Face, and TP=2 (with
sequence parallelism and recomputation) equal to TP=1, on gloo."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from tp_lm_workers import text_stack_worker, tiny_qwen3

from lavla.trainer.tensor_parallel.qwen3 import hf_to_megatron, megatron_to_hf, rotary_angles


@pytest.mark.parametrize("tp", [1, 2])
def test_weight_conversion_round_trips_exactly(tp):
    model = tiny_qwen3().model
    hf = model.state_dict()
    shards = [hf_to_megatron(hf, model.config, r, tp) for r in range(tp)]
    if tp == 2:  # each rank holds one KV group: q heads 0-1 + k0 + v0 in its qkv rows
        qkv = shards[1]["layers.0.self_attention.linear_qkv.weight"]
        assert qkv.shape == (4 * 16, 64)
        torch.testing.assert_close(qkv[:32], hf["layers.0.self_attn.q_proj.weight"][32:], rtol=0, atol=0)
        torch.testing.assert_close(qkv[32:48], hf["layers.0.self_attn.k_proj.weight"][16:], rtol=0, atol=0)
    back = megatron_to_hf(shards, model.config)
    expected = {k: v for k, v in hf.items() if k != "embed_tokens.weight"}
    assert back.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=0, msg=k)


def test_tp_must_divide_the_kv_heads():
    model = tiny_qwen3().model
    with pytest.raises(ValueError, match="TP=4 must divide"):
        hf_to_megatron(model.state_dict(), model.config, 0, 4)


def test_interleaved_mrope_angles_follow_each_axis_within_its_section():
    from types import SimpleNamespace

    cfg = SimpleNamespace(head_dim=16, rope_parameters={"rope_theta": 10000.0, "mrope_section": [4, 2, 2]})
    pos = torch.stack([torch.full((1, 3), 5), torch.full((1, 3), 7), torch.full((1, 3), 11)])  # t, h, w
    angles = rotary_angles(cfg, pos)[0, 0, 0, :8]
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    axis = torch.tensor([5, 7, 11, 5, 7, 11, 5, 5]).float()  # j%3 picks h/w for j < 3*section
    torch.testing.assert_close(angles, axis * inv)


@pytest.mark.slow
def test_tp2_equals_tp1_with_sequence_parallel_and_recompute(tmp_path):
    mp.spawn(text_stack_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    ref = ranks[0]
    valid = torch.tensor([[1] * 11, [1] * 8 + [0] * 3]).bool()
    for key in [(sp, rc) for sp in (False, True) for rc in (False, True)]:
        for r, res in enumerate(ranks):
            got = res[key]
            what = f"TP=2 sp={key[0]} recompute={key[1]} rank {r}"
            torch.testing.assert_close(got["logits"][valid], ref["ref_logits"][valid], rtol=0, atol=1e-5, msg=what)
            for i, (a, b) in enumerate(zip(got["hidden"], ref["ref_hidden"])):
                torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=1e-5, msg=f"{what} hidden {i}")
            assert got["grads"].keys() == ref["ref_grads"].keys()
            for name, g in got["grads"].items():
                torch.testing.assert_close(g, ref["ref_grads"][name], rtol=1e-5, atol=1e-5, msg=f"{what} grad {name}")
        # replicated weights (norms) get identical, complete gradients on both TP ranks
        for name, g in ranks[0][key]["replicated"].items():
            torch.testing.assert_close(g, ranks[1][key]["replicated"][name], rtol=0, atol=0, msg=name)
