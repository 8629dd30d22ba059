"""Workers for the tensor-parallel text-stack tests (importable by name for torch.multiprocessing.spawn).

Every rank builds the same tiny random Hugging Face Qwen3 model, runs it as the TP=1 reference, then
converts a copy to megatron at the group's TP size and compares outputs and gradients with it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

VOCAB, SEQ = 300, 11


def tiny_qwen3(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    model = Qwen3ForCausalLM(cfg)
    for p in model.parameters():  # random norms too (ones would hide a norm-weight mix-up)
        p.data.normal_(1.0 if p.ndim == 1 else 0.0, 0.1)
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 8:] = 0  # right padding, as the VLM's prompts are
    weights = torch.randn(2, SEQ, VOCAB, generator=g)
    return ids, mask, weights


def _loss(logits, mask, weights):
    return (logits * weights * mask[..., None]).sum() / 100.0


def init(rank: int, world: int, init_file: str, tp: int) -> None:
    from lavla.trainer.tensor_parallel import mpu

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mpu.initialize(tp, seed=0)


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    dist.destroy_process_group()


def text_stack_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """For each (sequence parallel, recompute): logits, hidden states and TP-consolidated gradients of
    the megatron stack, next to the HF reference's."""
    from megatron.core import parallel_state as ps

    from lavla.trainer.tensor_parallel.grad_sync import register_tp_grad_sums
    from lavla.trainer.tensor_parallel.qwen3 import MegatronQwen3TextModel, TextStackOptions, megatron_to_hf

    init(rank, world, init_file, tp=world)
    try:
        ids, mask, weights = batch()
        ref = tiny_qwen3()
        out = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        _loss(out.logits, mask, weights).backward()
        results = {"ref_logits": out.logits.detach(), "ref_hidden": [h.detach() for h in out.hidden_states],
                   "ref_grads": {n: p.grad.clone() for n, p in ref.model.named_parameters() if n != "embed_tokens.weight"}}
        for sp in (False, True):
            for recompute in (False, True):
                model = tiny_qwen3()
                model.model = MegatronQwen3TextModel(model.model, TextStackOptions(world, sp, recompute))
                register_tp_grad_sums(model, ps.get_tensor_model_parallel_group())
                model.train()
                hidden = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                logits = model.lm_head(hidden.last_hidden_state)
                _loss(logits, mask, weights).backward()
                grads = {k: v.grad.clone() for k, v in model.model.decoder.named_parameters()}
                shards = [None] * world
                dist.all_gather_object(shards, grads)
                results[(sp, recompute)] = {
                    "logits": logits.detach(), "hidden": [h.detach() for h in hidden.hidden_states],
                    "grads": megatron_to_hf(shards, model.config),
                    "replicated": {k: g for k, g in grads.items() if "norm" in k},
                }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        shutdown()
