"""A Hugging Face image-text-to-text model (Qwen3-VL) behind the ``VLBackbone`` interface.

``HFVLMBackbone(cfg: HFBackboneConfig, horizon=8)`` loads ``AutoModelForImageTextToText`` and
``AutoProcessor`` from ``cfg.pretrained_path`` (local files only) and turns a batch
(``image_primary``, ``image_wrist``, ``has_wrist``, ``language``; see ``data_service/schema.py``)
into one chat prompt per sample::

    <user> [primary image] [wrist image] cfg.prompt(instruction.lower(), horizon) </user>
    <assistant> 🔍 🔍 ... 🔍            (num_queries placeholder tokens after the generation prompt)

Prompts are right-padded; the query positions are found from the token ids (the last Q placeholder
ids of each row), never assumed. The model runs with ``output_hidden_states=True`` through its
inner (decoder) model only: the LM head is applied to the Q query states alone, inside this
module's forward (ZeRO-3 gathers a module's parameters only during its own forward), so no
full-sequence logits are ever formed.

Vocabulary. The placeholder must be one token: if the tokenizer splits it (or merges repeats) it is
added as a special token at build time. ``cfg.extra_tokens`` are added at build time, and recipes may
call ``add_tokens`` right after construction (LA-Direct's ``<ACT_i>``): embeddings and LM head are
resized when the new ids do not fit (Qwen3-VL's 151,936 rows leave room for a few hundred). Every
token added this way (plus the placeholder when it had to be added) is a *new token*: under LoRA
its embedding and LM-head rows train (``NewTokenRows``: a small [n, D] parameter over the frozen
layer, shared when the two are tied). peft's ``trainable_token_indices`` does the same job but
copies the whole vocabulary matrix at every call (and builds its dense gradient), and reads its
base layer's weight outside that layer's forward, which ZeRO-3's per-module gathering does not cover.

Tuning (``cfg.tuning``):

* ``frozen``: no parameter requires grad and the forward runs under ``torch.no_grad``;
* ``lora``: peft LoRA (r, alpha, dropout, gaussian init) on ``cfg.lora_target`` (``all-linear`` =
  every ``nn.Linear`` of the language model *and* the vision tower, as the FPT reference does; peft
  leaves the LM head out), plus trainable rows for the new tokens. ``add_tokens`` after wrapping
  re-wraps (allowed only while the adapters are still at their initial values);
* ``full``: every parameter trains.

Export: ``export_assets(out)`` writes the HF config and the processor (tokenizer with the added
tokens, image processor, chat template) to ``out/backbone/`` and returns the config overrides that
rebuild this backbone from there with ``load_weights=False`` (the policy's safetensors hold every
weight, LoRA included) and the same new-token list (so the LoRA token rows match).

Without torchvision, transformers cannot build Qwen-VL processors (their video processor needs it):
the wrapper then builds the same processor class without its video part (images only), so the
prompt and image tokens are exactly those of the full processor.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.backbone_config import HFBackboneConfig
from lavla.model.vl_backbone import VLBackbone, VLMOutput, gather_positions, next_token_ce

log = logging.getLogger(__name__)

ASSET_DIR = "backbone"
"""Sub-directory of a policy export holding the backbone's HF config and processor."""

_QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
"""Model types whose processors the image-only fallback can stand in for."""


# -- processor --------------------------------------------------------------------------------------

def _qwen_processor_class(model_type: str) -> type:
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor as cls
    elif model_type == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as cls
    else:
        from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor as cls
    return cls


def _image_only_processor(path: str, model_type: str) -> Any:
    """``<Qwen-VL>Processor`` with image processor + tokenizer only (no video processor, no torchvision)."""
    from transformers.processing_utils import ProcessorMixin

    base = _qwen_processor_class(model_type)

    class ImageOnlyProcessor(base):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
            self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
            self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
            self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"{base.__name__}ImageOnly"
    return ImageOnlyProcessor.from_pretrained(path, local_files_only=True)


def load_processor(path: str, model_type: str) -> tuple[Any, bool]:
    """``AutoProcessor.from_pretrained(path)``; returns (processor, is_full). Falls back to the
    image-only Qwen-VL processor where the full one cannot be built (no torchvision)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True), True
    except ImportError as e:
        if model_type not in _QWEN_VL_TYPES:
            raise
        log.info("%s: full processor unavailable (%s); using its image-only form", path, str(e).strip().splitlines()[0])
        return _image_only_processor(path, model_type), False


# -- the backbone -----------------------------------------------------------------------------------

def _rows(module: nn.Module) -> int:
    """Vocabulary rows of an embedding or LM head (from its attributes: ZeRO-3 empties the weights)."""
    while isinstance(module, NewTokenRows):
        module = module.base
    for name in ("num_embeddings", "out_features"):
        if isinstance(getattr(module, name, None), int):
            return int(getattr(module, name))
    w = module.weight
    return int(getattr(w, "ds_shape", w.shape)[0])


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    name = next(n for n, m in root.named_modules() if m is old)
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class NewTokenRows(nn.Module):
    """A frozen embedding or LM head whose rows for the added tokens are a small trainable parameter.

    Under LoRA only these rows of the vocabulary train (the embedding of an added token, the LM-head
    row that scores it; one shared parameter when the two are tied). Everything is reached through
    module calls and this module's own parameter, so ZeRO-3 gathers what the forward reads; no
    full-vocabulary copy is made.
    """

    def __init__(self, base: nn.Module, ids: list[int], rows: nn.Parameter | None = None) -> None:
        super().__init__()
        if not isinstance(base, (nn.Embedding, nn.Linear)) or getattr(base, "bias", None) is not None:
            raise TypeError(f"new-token rows need an nn.Embedding or a bias-free nn.Linear, got {base}")
        if rows is None and getattr(base.weight, "ds_numel", None) is not None and base.weight.numel() == 0:
            # The rows start as copies of the base layer's rows, which zero.Init has already split.
            raise ValueError("backbone.hf.tuning=lora with added tokens (the placeholder, extra_tokens) copies "
                             "their embedding rows, which trainer.zero_init has already partitioned: use "
                             "trainer.zero_init=false (ZeRO-3 still partitions the model after construction)")
        self.base = base
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=base.weight.device), persistent=False)
        if rows is None:
            rows = nn.Parameter(base.weight.detach()[self.ids].clone())
        self.rows = rows  # replaces the base's rows (the base weight stays frozen)
        self.rows.requires_grad_(True)

    def __getattr__(self, name: str) -> Any:  # weight, num_embeddings, ... of the wrapped layer
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(self.base, name)

    def trained(self) -> bool:
        """Whether the rows moved away from the base layer's rows."""
        return not torch.equal(self.rows.detach(), self.base.weight.detach()[self.ids].to(self.rows.dtype))

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        rows = self.rows.to(out.dtype)
        if isinstance(self.base, nn.Embedding):
            hit = x[..., None] == self.ids  # [..., n]
            new = F.embedding(hit.to(torch.int64).argmax(-1), rows)
            scale = getattr(self.base, "embed_scale", None)  # scaled embeddings (Gemma-style)
            if scale is not None:
                new = new * scale.to(new.dtype) if isinstance(scale, Tensor) else new * scale
            return torch.where(hit.any(-1, keepdim=True), new, out)
        return out.index_copy(-1, self.ids, F.linear(x, rows))


def _has_wrist(batch: dict[str, Any], b: int) -> Tensor:
    """[B] bool: which samples have a real wrist frame (none without ``image_wrist``; all without ``has_wrist``)."""
    if batch.get("image_wrist") is None:
        return torch.zeros(b, dtype=torch.bool)
    has = batch.get("has_wrist")
    return torch.ones(b, dtype=torch.bool) if has is None else torch.as_tensor(has).detach().cpu().bool()


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"backbone.hf.torch_dtype: unknown dtype {name!r} (float32, bfloat16, float16)")
    return dt


class HFVLMBackbone(VLBackbone):
    """A transformers VLM (Qwen3-VL) as a ``VLBackbone``; see the module docstring.

    Attributes: ``dim`` (text hidden size), ``num_layers`` (decoder layers L), ``vocab_size`` (LM
    head rows), ``horizon`` (the ``{horizon}`` of the prompt; recipes set it), ``placeholder_id``,
    ``new_tokens`` (tokens whose rows train under LoRA, in the order they were added).
    """

    def __init__(self, cfg: HFBackboneConfig, horizon: int = 8) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForImageTextToText

        if not cfg.pretrained_path:
            raise ValueError("backbone.hf.pretrained_path is empty")
        path = str(cfg.pretrained_path)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"backbone.hf.pretrained_path: {path} is not a directory (no downloads are made)")
        self.cfg = cfg
        self.horizon = int(horizon)
        self.source_path = path
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.processor, self._full_processor = load_processor(path, hf_config.model_type)
        self.tokenizer = self.processor.tokenizer
        opts = {"dtype": _dtype(cfg.torch_dtype), "attn_implementation": cfg.attn_implementation}
        if cfg.load_weights:
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, **opts)
        else:
            model = AutoModelForImageTextToText.from_config(hf_config, **opts)
        model.eval()  # the trainer's .train() switches it back; dropout-free models are unaffected
        text = model.config.get_text_config()
        self.dim = int(text.hidden_size)
        self.num_layers = int(text.num_hidden_layers)
        self.image_token_id = self._image_token_id(model)
        self.vision_token_ids = self._vision_ids()
        self.model: nn.Module = model
        self._peft = False
        self.new_tokens: list[str] = []
        self._new_token_ids: list[int] = []

        self.placeholder_id = self._single_token_id(cfg.placeholder)
        if self.placeholder_id is None:
            self.placeholder_id = self._add_to_vocab([cfg.placeholder])[0]
        if cfg.extra_tokens:
            self._add_to_vocab(list(cfg.extra_tokens))
        self._apply_tuning()

    # -- vocabulary -------------------------------------------------------------------------------

    @property
    def hf_model(self) -> nn.Module:
        """The transformers model (inside the peft wrapper under LoRA)."""
        return self.model.get_base_model() if self._peft else self.model

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return _rows(self.hf_model.get_output_embeddings())

    def _image_token_id(self, model: nn.Module) -> int | None:
        for src in (self.processor, model.config):
            for name in ("image_token_id", "image_token_index"):
                v = getattr(src, name, None)
                if isinstance(v, int):
                    return v
        return None

    def _single_token_id(self, token: str) -> int | None:
        """The id of ``token`` if the tokenizer keeps it (and runs of it) as one token each, else None."""
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == self.tokenizer.unk_token_id:
            ids = self.tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                return None
            tid = ids[0]
        if self.tokenizer.encode(token * 3, add_special_tokens=False) != [tid] * 3:
            return None
        return int(tid)

    def _add_to_vocab(self, tokens: list[str]) -> list[int]:
        """Add ``tokens`` to the tokenizer (special, never split) and grow the embeddings if needed."""
        from tokenizers import AddedToken

        missing = [t for t in dict.fromkeys(tokens) if self._single_token_id(t) is None]
        if missing:
            self.tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        ids = []
        for t in tokens:
            tid = self._single_token_id(t)
            if tid is None:
                raise RuntimeError(f"token {t!r} is still split by the tokenizer after adding it")
            ids.append(tid)
        model = self.hf_model
        need = max(len(self.tokenizer), max(ids) + 1)
        if need > _rows(model.get_input_embeddings()):
            model.resize_token_embeddings(need, mean_resizing=True)
        for t, tid in zip(tokens, ids):
            if t not in self.new_tokens:
                self.new_tokens.append(t)
                self._new_token_ids.append(tid)
        return ids

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Add ``tokens`` (special tokens, never split; existing ones keep their ids) and return their ids.

        Grows the embeddings and LM head when the ids do not fit. Call it before training starts:
        under LoRA the adapters are rebuilt to give the new rows trainable entries, which is refused
        once they have moved from their initial values.
        """
        tokens = list(tokens)
        if not tokens:
            return []
        if all(t in self.new_tokens for t in tokens):  # nothing to change (e.g. listed in extra_tokens)
            return [self._new_token_ids[self.new_tokens.index(t)] for t in tokens]
        if self._peft:
            self._unwrap_lora()
        ids = self._add_to_vocab(tokens)
        self._apply_tuning()
        return ids

    # -- tuning -----------------------------------------------------------------------------------

    def _apply_tuning(self) -> None:
        model = self.hf_model
        if self.cfg.tuning == "full":
            model.requires_grad_(True)
            return
        model.requires_grad_(False)
        if self.cfg.tuning == "lora":
            self._wrap_lora()

    def _lora_config(self) -> Any:
        from peft import LoraConfig

        target = self.cfg.lora_target.strip()
        targets: str | list[str] = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
        return LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                          target_modules=targets, init_lora_weights="gaussian")

    def _wrap_lora(self) -> None:
        from peft import get_peft_model

        self.model = get_peft_model(self.model, self._lora_config())
        self._peft = True
        if not self._new_token_ids:
            return
        # After peft (which would otherwise put adapters inside the wrappers and freeze their rows).
        model = self.hf_model
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        tied = head is not None and head.weight is emb.weight
        emb_rows = NewTokenRows(emb, self._new_token_ids)
        _replace_module(model, emb, emb_rows)
        if head is not None:
            _replace_module(model, head, NewTokenRows(head, self._new_token_ids, emb_rows.rows if tied else None))

    def _unwrap_lora(self) -> None:
        for name, m in self.model.named_modules():
            b = getattr(m, "lora_B", None)
            moved = isinstance(b, nn.ModuleDict) and any(bool(x.weight.detach().abs().max() > 0) for x in b.values())
            if moved or (isinstance(m, NewTokenRows) and m.trained()):
                raise RuntimeError(f"add_tokens after LoRA training started ({name} moved from its initial value): "
                                   "add tokens right after building the backbone, or list them in backbone.hf.extra_tokens")
        model = self.hf_model
        for m in (model.get_input_embeddings(), model.get_output_embeddings()):
            if isinstance(m, NewTokenRows):
                _replace_module(model, m, m.base)
        self.model = self.model.unload()
        self._peft = False

    def checkpointable_blocks(self) -> list[nn.Module]:
        """The outermost transformers layers that support activation checkpointing (decoder layers and
        vision blocks), for a recipe's ``checkpointable_blocks``."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        found: list[nn.Module] = []
        inside: set[int] = set()
        for m in self.modules():
            if id(m) in inside:
                continue
            if isinstance(m, GradientCheckpointingLayer):
                found.append(m)
                inside.update(id(x) for x in m.modules())
        return found

    # -- forward ----------------------------------------------------------------------------------

    def _prompt(self, instruction: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image"}]
        if self.cfg.use_wrist:
            content.append({"type": "image"})
        text = self.cfg.prompt.format(instruction=instruction.strip().lower(), horizon=self.horizon)
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def _render(self, instruction: str) -> str:
        conv = self._prompt(instruction)
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)

    def _frames(self, x: Tensor) -> Tensor:
        """uint8 [B,3,H,W] -> uint8 [B,3,S,S] on CPU (S = cfg.image_size)."""
        s = self.cfg.image_size
        x = x.detach()
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp_(0, 255).to(torch.uint8)
        return x.to("cpu", torch.uint8)

    def build_inputs(self, batch: dict[str, Any], num_queries: int) -> dict[str, Tensor]:
        """Processor outputs (input_ids, attention_mask, pixel_values, ...) for ``batch`` on CPU."""
        language = list(batch["language"])
        primary = self._frames(batch["image_primary"])
        b = primary.shape[0]
        if len(language) != b:
            raise ValueError(f"batch['language'] has {len(language)} entries for {b} images")
        images: list[list[Tensor]] = [[primary[i]] for i in range(b)]
        if self.cfg.use_wrist:
            wrist = batch.get("image_wrist")
            wrist = torch.zeros_like(primary) if wrist is None else self._frames(wrist)
            has = _has_wrist(batch, b).cpu()
            wrist = wrist * has[:, None, None, None].to(wrist.dtype)  # a black frame where there is no wrist camera
            for i in range(b):
                images[i].append(wrist[i])
        queries = self.cfg.placeholder * num_queries
        texts = [self._render(s) + queries for s in language]
        inputs = dict(self.processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="right"))
        ids = inputs["input_ids"]
        n, t = ids.shape
        if self.cfg.max_length and t != self.cfg.max_length:
            if t > self.cfg.max_length:
                raise ValueError(f"backbone.hf.max_length={self.cfg.max_length} but a prompt has {t} tokens "
                                 "(truncation would cut image tokens or queries)")
            pad_id = self.tokenizer.pad_token_id or 0
            for k, v in inputs.items():  # right-pad every per-token tensor (ids with the pad id, the rest with 0)
                if isinstance(v, Tensor) and v.dim() == 2 and v.shape == (n, t):
                    inputs[k] = F.pad(v, (0, self.cfg.max_length - t), value=pad_id if k == "input_ids" else 0)
        return inputs

    def _query_index(self, ids: Tensor, attn: Tensor, q: int) -> tuple[Tensor, Tensor]:
        """(query_index [B,Q], is_query [B,T]): the last ``q`` placeholder ids of each row."""
        is_ph = (ids == self.placeholder_id) & attn
        counts = is_ph.sum(1)
        if q and bool((counts < q).any()):
            raise RuntimeError(f"expected {q} placeholder tokens per prompt, found {counts.tolist()} "
                               f"(is {self.cfg.placeholder!r} split or merged by the tokenizer?)")
        from_end = is_ph.flip(1).cumsum(1).flip(1)  # placeholders at or after each position
        is_query = is_ph & (from_end <= q)
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        query_index = pos[is_query].view(ids.shape[0], q)
        return query_index, is_query

    def _missing_wrist(self, ids: Tensor, attn: Tensor, has_wrist: Tensor) -> Tensor:
        """[B,T] True at the image tokens of a black (missing) wrist frame."""
        if not self.cfg.use_wrist or self.image_token_id is None:
            return torch.zeros_like(attn)
        is_img = (ids == self.image_token_id) & attn
        per_row = is_img.sum(1, keepdim=True)  # both frames have the same size: the second half is the wrist's
        second = is_img & (is_img.cumsum(1) > per_row // 2)
        return second & ~has_wrist.to(ids.device)[:, None]

    def _vision_ids(self) -> list[int]:
        """Ids of the image token and the vision markers this tokenizer has (never text targets)."""
        vision = {self.image_token_id}
        for token in ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|video_pad|>", "<image>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                vision.add(tid)
        vision.discard(None)
        return sorted(vision)

    def _text_targets(self, ids: Tensor, attn: Tensor, is_query: Tensor) -> Tensor:
        """[B,T] True at the prompt's text tokens: attended, not a query, not an image or vision marker."""
        is_vision = torch.isin(ids, torch.tensor(self.vision_token_ids, device=ids.device, dtype=ids.dtype))
        return attn & ~is_query & ~is_vision & (ids != self.placeholder_id)

    def forward(self, batch: dict[str, Any], num_queries: int = 0, return_query_logits: bool = False,
                return_text_ce: bool = False) -> VLMOutput:
        model = self.hf_model
        dev, dtype = next(model.parameters()).device, model.dtype
        inputs = self.build_inputs(batch, num_queries)
        inputs = {k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()
                  if isinstance(v, Tensor)}
        ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
        query_index, is_query = self._query_index(ids, attn, num_queries)
        missing = self._missing_wrist(ids, attn, _has_wrist(batch, ids.shape[0]))
        frozen = self.cfg.tuning == "frozen"
        grad = contextlib.nullcontext() if not frozen else torch.no_grad()
        with grad:
            inner = getattr(model, model.base_model_prefix, None) if model.base_model_prefix else None
            if not isinstance(inner, nn.Module):
                raise TypeError(f"{type(model).__name__} has no inner model at .{model.base_model_prefix}")
            out = inner(**inputs, output_hidden_states=True, use_cache=False, return_dict=True)
            hidden = tuple(out.hidden_states)
            if len(hidden) != self.num_layers + 1:
                raise RuntimeError(f"{type(model).__name__} returned {len(hidden)} hidden states, "
                                   f"expected {self.num_layers + 1}")
            logits = None
            if return_query_logits:
                logits = model.get_output_embeddings()(gather_positions(hidden[-1], query_index))
            text_ce = None
            if return_text_ce:
                text_ce = next_token_ce(hidden[-1], model.get_output_embeddings(), ids,
                                        self._text_targets(ids, attn, is_query))
        mask = attn & ~missing
        task_mask = mask & ~is_query
        return VLMOutput(hidden, mask, query_index, task_mask, logits, text_ce)

    # -- export -----------------------------------------------------------------------------------

    def export_assets(self, out_dir: Path) -> dict[str, Any]:
        """Write config + processor to ``out_dir/backbone``; returns the overrides that rebuild from it."""
        out = Path(out_dir) / ASSET_DIR
        out.mkdir(parents=True, exist_ok=True)
        self.hf_model.config.save_pretrained(out)
        if self._full_processor:
            self.processor.save_pretrained(out)
        else:
            self.tokenizer.save_pretrained(out)
            self.processor.image_processor.save_pretrained(out)
            if self.processor.chat_template:
                (out / "chat_template.jinja").write_text(self.processor.chat_template)
            src = Path(self.source_path)
            for name in ("video_preprocessor_config.json", "processor_config.json"):
                if (src / name).is_file() and not (out / name).exists():
                    shutil.copyfile(src / name, out / name)
        return {
            "backbone.hf.pretrained_path": ASSET_DIR,
            "backbone.hf.load_weights": False,
            "backbone.hf.extra_tokens": list(self.new_tokens),
        }
