"""HFVLMBackbone on a tiny random Qwen3-VL written to disk (real transformers/peft loading, offline)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from lavla.model.backbone_config import HFBackboneConfig  # noqa: E402
from hf_tiny_models import write_tiny_llava, write_tiny_qwen3_vl  # noqa: E402  (tests/model is on sys.path: conftest, and the ZeRO-3 worker below)
from lavla.model.hf_vlm import HFVLMBackbone  # noqa: E402
from lavla.model.vl_backbone import gather_positions  # noqa: E402

IMAGE = 32  # backbone.hf.image_size: 8x8 patches of 4 -> 16 LM tokens per frame
Q = 5
ACT = [f"<ACT_{i}>" for i in range(4)]


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture(scope="session")
def tiny_qwen_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl_tied"), num_layers=2, tie_word_embeddings=True)


def build(path: Path, seed: int = 0, **kw: Any) -> HFVLMBackbone:
    torch.manual_seed(seed)
    return HFVLMBackbone(HFBackboneConfig(pretrained_path=str(path), image_size=IMAGE, **kw))


def make_batch(language: list[str], has_wrist: list[bool] | None = None, seed: int = 0, size: int = 40) -> dict[str, Any]:
    """Frames of ``size`` (resized to IMAGE by the backbone); wrist frames zero where there is none."""
    g = torch.Generator().manual_seed(seed)
    b = len(language)
    has = torch.tensor(has_wrist if has_wrist is not None else [True] * b)
    return {
        "image_primary": torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8),
        "image_wrist": torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8) * has[:, None, None, None],
        "has_wrist": has,
        "language": language,
    }


LANG = ["Pick up the red block", "open the top drawer of the cabinet and put the spoon in the cup", "push it"]


def lora_params(bb: HFVLMBackbone) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in bb.named_modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {})) > 0}


# -- loading, shapes, positions --------------------------------------------------------------------

def test_loads_qwen3_vl_and_returns_the_interface_shapes(tiny_qwen: Path) -> None:
    from transformers import Qwen3VLForConditionalGeneration

    bb = build(tiny_qwen, tuning="frozen")
    assert isinstance(bb.hf_model, Qwen3VLForConditionalGeneration)
    assert (bb.dim, bb.num_layers) == (64, 3)
    batch = make_batch(LANG)
    out = bb(batch, num_queries=Q, return_query_logits=True)
    b, t = out.mask.shape
    assert b == 3 and len(out.hidden_states) == bb.num_layers + 1
    assert all(h.shape == (b, t, bb.dim) for h in out.hidden_states)
    assert out.mask.dtype == out.task_mask.dtype == torch.bool
    assert out.query_index.shape == (b, Q) and out.query_index.dtype == torch.int64
    assert out.query_logits is not None and out.query_logits.shape == (b, Q, bb.vocab_size)
    assert bb.vocab_size == bb.hf_model.lm_head.out_features
    assert bb(batch, num_queries=Q).query_logits is None
    none = bb(batch, num_queries=0)
    assert none.query_index.shape == (b, 0) and torch.equal(none.task_mask, none.mask)


def test_placeholder_is_one_token_and_query_index_finds_it(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen")
    tok = bb.tokenizer
    # the tiny BPE splits the emoji into bytes: the backbone added it as a special token
    assert bb.new_tokens == ["🔍"] and tok.encode("🔍" * 4, add_special_tokens=False) == [bb.placeholder_id] * 4
    batch = make_batch(LANG)
    inputs = bb.build_inputs(batch, Q)
    ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
    out = bb(batch, num_queries=Q)
    lengths = attn.sum(1)
    assert len(set(lengths.tolist())) == 3  # different instruction lengths -> padding in two rows
    assert bool((ids.gather(1, out.query_index) == bb.placeholder_id).all())
    # right padding: the Q queries are the last real tokens of each row, in prompt order
    expected = lengths[:, None] - Q + torch.arange(Q)
    assert torch.equal(out.query_index, expected)
    rows = torch.arange(3)[:, None]
    assert not out.task_mask[rows, out.query_index].any()
    assert torch.equal(out.mask, attn)  # every wrist camera present: mask = attention mask
    assert torch.equal(out.task_mask, attn & ~(torch.zeros_like(attn).scatter(1, out.query_index, True)))
    assert not out.task_mask[~attn].any()
    image = ids == bb.image_token_id
    assert bool(out.task_mask[image].all()) and image.sum().item() == 3 * 2 * 16
    # the prompt: chat template, both images, the lowercased instruction and the horizon
    text = tok.decode(ids[0][attn[0]])
    assert "take to pick up the red block? Please predict the next 8 robot actions:" in text
    assert text.count("<|vision_start|>") == 2 and text.endswith("assistant\n" + "🔍" * Q)


def test_horizon_and_prompt_template(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen", prompt="Do: {instruction}. Next {horizon} steps", use_wrist=False)
    bb.horizon = 5
    inputs = bb.build_inputs(make_batch(["Wipe THE Table"]), 2)
    text = bb.tokenizer.decode(inputs["input_ids"][0])
    assert "Do: wipe the table. Next 5 steps" in text and text.count("<|vision_start|>") == 1


def test_hidden_states_are_embeddings_then_layers_with_the_final_norm(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen")
    batch = make_batch(LANG[:2])
    out = bb(batch, num_queries=Q)
    inputs = bb.build_inputs(batch, Q)
    inner = bb.hf_model.model
    with torch.no_grad():
        ref = inner(**inputs, use_cache=False)
        emb = inner.language_model.embed_tokens(inputs["input_ids"])
    assert torch.equal(out.hidden_states[-1], ref.last_hidden_state)  # after the final RMSNorm
    text = inputs["mm_token_type_ids"] == 0
    assert torch.equal(out.hidden_states[0][text], emb[text])
    assert not torch.equal(out.hidden_states[1], out.hidden_states[2])


def test_query_logits_are_the_lm_head_at_the_queries(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="full")
    batch = make_batch(LANG)
    out = bb(batch, num_queries=Q, return_query_logits=True)
    head = bb.hf_model.lm_head
    manual = gather_positions(out.hidden_states[-1], out.query_index) @ head.weight.t()
    torch.testing.assert_close(out.query_logits, manual, rtol=1e-5, atol=1e-5)
    # ... and what the full HF model computes at those positions
    with torch.no_grad():
        full = bb.hf_model(**bb.build_inputs(batch, Q)).logits
    torch.testing.assert_close(out.query_logits.detach(), gather_positions(full, out.query_index), rtol=1e-4, atol=1e-5)


def test_text_ce_is_the_lm_loss_on_the_prompt_text_only(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="lora")
    batch = make_batch(LANG)
    out = bb(batch, num_queries=Q, return_text_ce=True)
    inputs = bb.build_inputs(batch, Q)
    ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
    with torch.no_grad():
        full = bb.hf_model(**inputs).logits  # [B,T,V] from the whole HF model
    tok = bb.tokenizer
    vision = {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")}
    target = attn.clone()
    for v in vision | {bb.placeholder_id}:
        target &= ids != v
    assert int(target.sum()) > 3 * 10  # the chat template and every instruction are targets
    assert not bool((target & (ids == bb.image_token_id)).any())
    pred = full[:, :-1][target[:, 1:]]
    manual = torch.nn.functional.cross_entropy(pred.float(), ids[:, 1:][target[:, 1:]])
    torch.testing.assert_close(out.text_ce.detach(), manual, rtol=1e-4, atol=1e-5)
    assert out.text_ce.requires_grad  # reaches the LoRA adapters through the hidden states
    assert bb(batch, num_queries=Q).text_ce is None


# -- tuning ----------------------------------------------------------------------------------------

def test_frozen_has_no_trainable_parameters_and_no_graph(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen")
    bb.add_tokens(ACT)
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    out = bb(make_batch(LANG[:2]), num_queries=Q, return_query_logits=True)
    assert not any(h.requires_grad for h in out.hidden_states) and not out.query_logits.requires_grad
    assert all(p.grad is None for p in bb.parameters())


def test_lora_trains_adapters_and_new_token_rows_only(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="lora", lora_r=4, lora_alpha=8)
    ids = bb.add_tokens(ACT)  # after construction, as the recipes do: LoRA is re-wrapped
    trainable = {n: p for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or n.endswith(".rows") for n in trainable)
    layers = lora_params(bb)
    assert any(".visual." in n for n in layers) and any(".language_model.layers." in n for n in layers)
    assert not any("lm_head" in n for n in layers)
    for m in layers.values():
        assert m.r["default"] == 4 and m.lora_A["default"].weight.shape[0] == 4
        assert m.scaling["default"] == pytest.approx(8 / 4)
        assert torch.count_nonzero(m.lora_B["default"].weight) == 0  # gaussian A, zero B
    # the new rows (placeholder + ACT) of the embedding and the untied LM head
    deltas = {n: p for n, p in trainable.items() if n.endswith(".rows")}
    assert len(deltas) == 2 and any("embed_tokens" in n for n in deltas) and any("lm_head" in n for n in deltas)
    assert all(p.shape == (1 + len(ACT), bb.dim) for p in deltas.values())
    assert bb.new_tokens == ["🔍", *ACT] and ids == [bb.placeholder_id + 1 + i for i in range(len(ACT))]

    bb.train()
    out = bb(make_batch(LANG[:2]), num_queries=Q, return_query_logits=True)
    loss = out.hidden_states[-1].square().mean() + out.query_logits[..., ids].logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is None for n, p in bb.named_parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items() if ".lora_B." in n)
    for n, p in deltas.items():
        assert p.grad is not None
        assert p.grad[0].abs().sum() > 0 if "embed_tokens" in n else p.grad[1:].abs().sum() > 0


def test_lora_target_list(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="lora", lora_target="q_proj, v_proj", lora_r=2)
    names = {n.rsplit(".", 1)[-1] for n in lora_params(bb)}
    assert names == {"q_proj", "v_proj"}


def test_lora_on_tied_embeddings(tiny_qwen_tied: Path) -> None:
    bb = build(tiny_qwen_tied, tuning="lora", lora_r=2)
    ids = bb.add_tokens(ACT)
    deltas = [p for n, p in bb.named_parameters() if p.requires_grad and n.endswith(".rows")]
    assert len(deltas) == 1  # the LM head shares the embedding's rows
    with torch.no_grad():
        before = bb(make_batch(LANG[:1]), num_queries=2, return_query_logits=True).query_logits[..., ids]
        deltas[0][1:] += 1.0
        after = bb(make_batch(LANG[:1]), num_queries=2, return_query_logits=True).query_logits[..., ids]
    assert not torch.allclose(before, after)


def test_full_trains_everything(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="full")
    bb.add_tokens(ACT)
    assert all(p.requires_grad for p in bb.parameters())
    bb.train()
    out = bb(make_batch(LANG[:2]), num_queries=Q, return_query_logits=True)
    (out.hidden_states[-1].square().mean() + out.query_logits.square().mean()).backward()
    m = bb.hf_model
    for p in (m.model.visual.patch_embed.proj.weight, m.model.language_model.embed_tokens.weight, m.lm_head.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


# -- vocabulary ------------------------------------------------------------------------------------

def test_add_tokens_grows_the_vocabulary(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="lora", lora_r=2)
    v0 = bb.vocab_size
    ids = bb.add_tokens(ACT)
    assert ids == list(range(v0, v0 + len(ACT))) and bb.vocab_size == v0 + len(ACT)
    assert bb.hf_model.get_input_embeddings().weight.shape[0] == v0 + len(ACT)
    assert bb.tokenizer.encode("<ACT_2><ACT_0>", add_special_tokens=False) == [ids[2], ids[0]]
    assert bb.add_tokens(ACT[:2]) == ids[:2] and bb.vocab_size == v0 + len(ACT)  # already there
    out = bb(make_batch(LANG[:2]), num_queries=Q, return_query_logits=True)
    assert out.query_logits.shape[-1] == bb.vocab_size and bool(out.query_logits[..., ids].isfinite().all())
    # at build time through the config
    cfg_bb = build(tiny_qwen, tuning="frozen", extra_tokens=ACT)
    assert [cfg_bb.tokenizer.convert_tokens_to_ids(t) for t in ACT] == ids and cfg_bb.vocab_size == bb.vocab_size


def test_new_token_rows_refuse_an_embedding_partitioned_at_construction() -> None:
    """Under trainer.zero_init the base embedding is an empty ZeRO-3 shard: its rows cannot be copied."""
    from lavla.model.hf_vlm import NewTokenRows

    emb = torch.nn.Embedding(10, 4)
    emb.weight.data = torch.empty(0)
    emb.weight.ds_numel = 40  # what zero.Init leaves on a partitioned parameter
    with pytest.raises(ValueError, match="trainer.zero_init=false"):
        NewTokenRows(emb, [8, 9])
    assert NewTokenRows(torch.nn.Embedding(10, 4), [8, 9]).rows.shape == (2, 4)


def test_add_tokens_after_lora_training_is_refused(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="lora", lora_r=2)
    with torch.no_grad():
        next(iter(lora_params(bb).values())).lora_B["default"].weight.fill_(0.1)
    with pytest.raises(RuntimeError, match="add_tokens after LoRA training"):
        bb.add_tokens(ACT)


# -- images and padding ----------------------------------------------------------------------------

def test_wrist_image_matters_only_where_present(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen")
    batch = make_batch(LANG[:2], has_wrist=[True, False])
    batch["image_wrist"][1] = 77  # garbage behind has_wrist=False is ignored (a black frame is used)
    out = bb(batch, num_queries=Q)
    other = dict(batch, image_wrist=255 - batch["image_wrist"])
    out2 = bb(other, num_queries=Q)
    assert not torch.allclose(out.hidden_states[-1][0], out2.hidden_states[-1][0])
    assert torch.equal(out.hidden_states[-1][1], out2.hidden_states[-1][1])
    # the missing view's image tokens are masked out; the present one's are not
    ids = bb.build_inputs(batch, Q)["input_ids"]
    image = ids == bb.image_token_id
    assert int((image & ~out.mask)[0].sum()) == 0 and int((image & ~out.mask)[1].sum()) == 16
    assert int((image & out.task_mask)[1].sum()) == 16  # the primary view
    # without use_wrist the wrist frame is not in the prompt at all
    solo = build(tiny_qwen, tuning="frozen", use_wrist=False)
    a, b2 = solo(batch, num_queries=Q), solo(other, num_queries=Q)
    assert torch.equal(a.hidden_states[-1], b2.hidden_states[-1]) and a.mask.shape[1] == out.mask.shape[1] - 18


def test_padding_does_not_change_any_sample(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen")
    batch = make_batch(LANG, has_wrist=[True, False, True])
    out = bb(batch, num_queries=Q, return_query_logits=True)
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in batch.items()}  # tensors and the language list alike
        alone = bb(one, num_queries=Q, return_query_logits=True)
        n = alone.mask.shape[1]
        assert int(out.mask[i].sum()) == int(alone.mask[0].sum()) and bool(out.mask[i, :n].eq(alone.mask[0]).all())
        assert not out.mask[i, n:].any()
        assert torch.equal(out.query_index[i], alone.query_index[0])
        for h, h1 in zip(out.hidden_states, alone.hidden_states):
            torch.testing.assert_close(h[i, :n], h1[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.query_logits[i], alone.query_logits[0], rtol=1e-4, atol=1e-5)


def test_max_length_pads_and_refuses_truncation(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="frozen", max_length=160)
    out = bb(make_batch(LANG[:2]), num_queries=Q)
    assert out.mask.shape[1] == 160 and bool((out.query_index < out.mask.sum(1, keepdim=True)).all())
    short = build(tiny_qwen, tuning="frozen", max_length=40)
    with pytest.raises(ValueError, match="max_length"):
        short(make_batch(LANG[:2]), num_queries=Q)


# -- export and determinism ------------------------------------------------------------------------

def test_export_assets_rebuild_gives_identical_outputs(tiny_qwen: Path, tmp_path: Path) -> None:
    bb = build(tiny_qwen, tuning="lora", lora_r=4)
    ids = bb.add_tokens(ACT)
    with torch.no_grad():  # stands in for training: every adapter and new-token row moves
        for p in bb.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    overrides = bb.export_assets(tmp_path)
    assert overrides == {"backbone.hf.pretrained_path": "backbone", "backbone.hf.load_weights": False,
                         "backbone.hf.extra_tokens": ["🔍", *ACT]}
    asset = tmp_path / "backbone"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "chat_template.jinja"):
        assert (asset / name).is_file(), name
    assert not list(asset.glob("*.safetensors"))  # the policy's own safetensors hold the weights

    cfg = HFBackboneConfig(pretrained_path=str(asset), load_weights=False, image_size=IMAGE, tuning="lora", lora_r=4,
                           extra_tokens=overrides["backbone.hf.extra_tokens"])
    torch.manual_seed(123)
    rebuilt = HFVLMBackbone(cfg)
    assert rebuilt.add_tokens(ACT) == ids and rebuilt.placeholder_id == bb.placeholder_id  # the recipe's call again
    assert rebuilt.vocab_size == bb.vocab_size
    batch = make_batch(LANG, has_wrist=[True, False, True])
    with torch.no_grad():
        before = rebuilt(batch, num_queries=Q).hidden_states[-1]
        rebuilt.load_state_dict(bb.state_dict())  # strict: same keys and shapes, LoRA and token rows included
        want, got = bb(batch, num_queries=Q, return_query_logits=True), rebuilt(batch, num_queries=Q, return_query_logits=True)
    assert not torch.allclose(before, want.hidden_states[-1])
    for x, y in zip(want.hidden_states, got.hidden_states):
        assert torch.equal(x, y)
    assert torch.equal(want.query_logits, got.query_logits) and torch.equal(want.query_index, got.query_index)


def test_determinism(tiny_qwen: Path) -> None:
    batch = make_batch(LANG, has_wrist=[True, False, True])
    a = build(tiny_qwen, tuning="lora", lora_r=4)
    b = build(tiny_qwen, tuning="lora", lora_r=4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with torch.no_grad():
        oa, ob, oa2 = (m(batch, num_queries=Q, return_query_logits=True) for m in (a, b, a))
    for x, y, z in zip(oa.hidden_states, ob.hidden_states, oa2.hidden_states):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert torch.equal(oa.query_logits, ob.query_logits)


# -- other families and training plumbing -----------------------------------------------------------

def test_generic_image_text_to_text_model(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """LLaVA (CLIP + Llama): AutoProcessor, its chat template and image tokens, the same contract."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    bb = build(write_tiny_llava(tmp_path_factory.mktemp("tiny_llava")), tuning="lora", lora_r=2)
    ids = bb.add_tokens(ACT[:2])
    assert isinstance(bb.hf_model, LlavaForConditionalGeneration) and (bb.dim, bb.num_layers) == (64, 2)
    batch = make_batch(LANG, has_wrist=[True, False, True])
    out = bb(batch, num_queries=Q, return_query_logits=True)
    inputs = bb.build_inputs(batch, Q)
    assert len(out.hidden_states) == 3 and out.query_logits.shape == (3, Q, bb.vocab_size)
    assert bool((inputs["input_ids"].gather(1, out.query_index) == bb.placeholder_id).all())
    assert torch.equal(out.query_index[:, -1], inputs["attention_mask"].sum(1) - 1)
    image = inputs["input_ids"] == bb.image_token_id
    assert image.sum(1).tolist() == [32, 32, 32] and (image & ~out.mask).sum(1).tolist() == [0, 16, 0]
    with torch.no_grad():
        full = bb.hf_model(**inputs).logits
    torch.testing.assert_close(out.query_logits.detach(), gather_positions(full, out.query_index), rtol=1e-4, atol=1e-5)
    assert bb.tokenizer.encode("<ACT_1>", add_special_tokens=False) == [ids[1]]
    # export through the full processor's save_pretrained, rebuild from it
    overrides = bb.export_assets(tmp_path)
    rebuilt = HFVLMBackbone(HFBackboneConfig(pretrained_path=str(tmp_path / "backbone"), load_weights=False,
                                             image_size=IMAGE, tuning="lora", lora_r=2,
                                             extra_tokens=overrides["backbone.hf.extra_tokens"]))
    assert isinstance(rebuilt.processor, LlavaProcessor) and rebuilt.add_tokens(ACT[:2]) == ids
    rebuilt.load_state_dict(bb.state_dict())
    with torch.no_grad():
        again = rebuilt(batch, num_queries=Q, return_query_logits=True)
    assert torch.equal(again.query_logits, out.query_logits.detach())


def test_checkpointable_blocks_are_the_decoder_layers_and_vision_blocks(tiny_qwen: Path) -> None:
    bb = build(tiny_qwen, tuning="lora", lora_r=2)
    blocks = bb.checkpointable_blocks()
    names = sorted(type(m).__name__ for m in blocks)
    assert names == ["Qwen3VLTextDecoderLayer"] * 3 + ["Qwen3VLVisionBlock"]


ZERO3_SCRIPT = r"""
import json, sys, torch, deepspeed
sys.path.insert(0, sys.argv[3])
from lavla.model.backbone_config import HFBackboneConfig
from lavla.model.hf_vlm import HFVLMBackbone
from test_hf_vlm import LANG, make_batch

torch.manual_seed(0)
bb = HFVLMBackbone(HFBackboneConfig(pretrained_path=sys.argv[1], image_size=32, tuning=sys.argv[2], lora_r=4))
ids = bb.add_tokens(["<ACT_0>", "<ACT_1>"])
batch = make_batch(LANG, has_wrist=[True, False, True])
with torch.no_grad():
    ref = bb(batch, num_queries=3, return_query_logits=True)

class Policy(torch.nn.Module):  # a recipe: the backbone plus a head that always trains
    def __init__(self):
        super().__init__()
        self.backbone, self.head = bb, torch.nn.Linear(bb.dim, 1)
    def forward(self, batch):
        out = self.backbone.encode(batch, num_queries=3, return_query_logits=True)
        return self.head(out.hidden_states[-1]).mean() + out.query_logits[..., ids].logsumexp(-1).mean(), out

model = Policy()
cfg = {"train_batch_size": 3, "train_micro_batch_size_per_gpu": 3, "steps_per_print": 1 << 30,
       "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
       "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}, "zero_allow_untested_optimizer": True}
engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=cfg)
partitioned = all(p.numel() == 0 for p in bb.parameters())
loss, out = engine(batch)
same = all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states)) and torch.equal(out.query_logits, ref.query_logits)
engine.backward(loss)
engine.step()
with torch.no_grad():
    _, after = engine(batch)
moved = not torch.allclose(after.query_logits, ref.query_logits)
print("RESULT " + json.dumps({"partitioned": partitioned, "same": bool(same), "moved": moved, "loss": float(loss)}))
"""


@pytest.mark.slow
def test_zero3_gathers_parameters_inside_forward(tiny_qwen: Path) -> None:
    """One CPU rank, ZeRO-3 with every parameter partitioned: the same outputs (query logits included),
    and a step moves the LoRA adapters and the new-token rows."""
    pytest.importorskip("deepspeed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT, str(tiny_qwen), "lora", str(Path(__file__).parent)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["partitioned"] and result["same"] and result["moved"], result


def test_image_only_processor_matches_the_full_one(tiny_qwen: Path) -> None:
    """Where torchvision exists, Qwen3VLProcessor itself loads; the fallback must tokenize identically."""
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor

    from lavla.model.hf_vlm import _image_only_processor

    full, lite = AutoProcessor.from_pretrained(tiny_qwen), _image_only_processor(str(tiny_qwen), "qwen3_vl")
    bb = build(tiny_qwen, tuning="frozen")
    texts = [bb._render(s) for s in LANG[:2]]
    images = [[torch.full((3, IMAGE, IMAGE), 9 * i, dtype=torch.uint8)] * 2 for i in range(2)]
    a = full(text=list(texts), images=images, return_tensors="pt", padding=True)
    b = lite(text=list(texts), images=images, return_tensors="pt", padding=True)
    for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(a[k], b[k]), k
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=1e-2)
