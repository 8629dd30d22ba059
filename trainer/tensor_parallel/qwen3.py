"""The Qwen3 / Qwen3-VL text stack as a megatron-core transformer, and its exact weight converter.

``MegatronQwen3TextModel`` stands in for Hugging Face's ``Qwen3Model`` / ``Qwen3VLTextModel``
inside the HF model object: same call (``inputs_embeds``, 2D padding mask, 1D/3D/4D position ids,
Qwen3-VL's ``visual_pos_masks`` and ``deepstack_visual_embeds``), same outputs (the last hidden
state after the final norm, and every layer's hidden state). Its decoder is megatron's
``TransformerBlock`` with the local spec (RMSNorm, SwiGLU, GQA, q/k-norm), tensor parallel across
the TP group and optionally sequence parallel. The token embedding stays the Hugging Face module
(replicated under ZeRO), so added tokens, LoRA token rows and tied LM heads work as at TP=1.

Rotary angles are computed here from the HF config, Qwen3-VL's interleaved multimodal RoPE
included (frequency ``j`` turns with time, height or width position by ``j mod 3`` inside each
axis' section), and handed to megatron as angles, which it applies with ``rotate_half`` as HF does.

Weight layout (HF -> megatron, per TP rank ``r`` of ``tp``):

* ``q_proj, k_proj, v_proj`` -> ``linear_qkv``: rows grouped per KV group ``[q heads of the group;
  k; v]``, so a contiguous TP split hands each rank whole groups;
* ``gate_proj, up_proj`` -> ``linear_fc1`` = ``[gate_r; up_r]`` (megatron's SwiGLU splits its
  output in two halves on each rank);
* ``o_proj``, ``down_proj`` -> ``linear_proj``, ``linear_fc2`` split by input columns;
* norms are replicated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED_TYPES = ("qwen3", "qwen3_vl_text")


@dataclass(frozen=True)
class TextStackOptions:
    """How the megatron text stack runs (``parallel.*`` of the trainer config)."""

    tensor_parallel_size: int = 1
    """TP ranks sharing each layer's heads and MLP columns."""
    sequence_parallel: bool = False
    """Shard the activations between TP regions (norms, residuals) along the sequence."""
    recompute: bool = False
    """Recompute every layer in backward (megatron's ``tensor_parallel.checkpoint``)."""


def _text_config(hf_config: Any) -> Any:
    return getattr(hf_config, "text_config", hf_config)


def check_supported(text_cfg: Any) -> None:
    kind = getattr(text_cfg, "model_type", "?")
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"tensor parallelism supports the text stacks {SUPPORTED_TYPES}, not {kind!r}")
    rope = getattr(text_cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{kind}: rope_type {rope.get('rope_type')!r} is not supported under TP (only 'default')")
    if any(t != "full_attention" for t in (getattr(text_cfg, "layer_types", None) or [])):
        raise ValueError(f"{kind}: sliding-window layers are not supported under TP")
    if getattr(text_cfg, "attention_bias", False):
        raise ValueError(f"{kind}: attention_bias=True is not supported under TP")


def transformer_config(text_cfg: Any, opts: TextStackOptions, dtype: torch.dtype) -> Any:
    """megatron's ``TransformerConfig`` for a HF Qwen3 text config."""
    from megatron.core.transformer import TransformerConfig

    check_supported(text_cfg)
    return TransformerConfig(
        num_layers=text_cfg.num_hidden_layers,
        hidden_size=text_cfg.hidden_size,
        ffn_hidden_size=text_cfg.intermediate_size,
        num_attention_heads=text_cfg.num_attention_heads,
        num_query_groups=text_cfg.num_key_value_heads,
        kv_channels=text_cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=text_cfg.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=True,
        hidden_dropout=0.0,
        attention_dropout=float(getattr(text_cfg, "attention_dropout", 0.0) or 0.0),
        tensor_model_parallel_size=opts.tensor_parallel_size,
        sequence_parallel=opts.sequence_parallel and opts.tensor_parallel_size > 1,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=True,
        perform_initialization=False,  # every weight comes from the HF model
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )


class TPRMSNorm(nn.RMSNorm):
    """RMSNorm for megatron's layer spec that records whether its weight's gradient is partial
    across the TP group (``tp_partial_grad``): q/k-norms always are (each rank normalizes only its
    heads), the other norms under sequence parallelism (each rank sees a slice of the sequence).
    ``grad_sync`` sums those gradients over TP; megatron's local spec offers no torch norm under
    sequence parallelism at all, hence this class."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-6, *, for_qk: bool = False) -> None:
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.tp_partial_grad = for_qk or bool(config.sequence_parallel)  # type: ignore[attr-defined]
        self.weight.sequence_parallel = bool(config.sequence_parallel) and not for_qk  # type: ignore[attr-defined]


class TPQKNorm(TPRMSNorm):
    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__(config, hidden_size, eps, for_qk=True)


def layer_spec() -> Any:
    """megatron's local GPT layer spec with :class:`TPRMSNorm` norms."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    sub = spec.submodules
    sub.input_layernorm = TPRMSNorm
    sub.pre_mlp_layernorm = TPRMSNorm
    sub.self_attention.submodules.q_layernorm = TPQKNorm
    sub.self_attention.submodules.k_layernorm = TPQKNorm
    return spec


def rotary_angles(text_cfg: Any, position_ids: Tensor) -> Tensor:
    """RoPE angles ``[S, B, 1, head_dim]`` (``cat(f, f)`` as HF's ``rotate_half`` convention wants).

    ``position_ids``: ``[B, S]`` (one axis) or ``[3, B, S]`` (Qwen3-VL's time/height/width).
    """
    rope = getattr(text_cfg, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(text_cfg, "rope_theta", 10000.0)))
    dim = text_cfg.head_dim
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=position_ids.device) / dim))
    if position_ids.ndim == 2:
        freqs = position_ids[..., None].float() * inv_freq
    else:
        per_axis = position_ids[..., None].float() * inv_freq  # [3, B, S, dim/2]
        freqs = per_axis[0].clone()
        section = rope.get("mrope_section")
        if section is None:
            raise ValueError("3-axis position ids need rope_parameters.mrope_section")
        for axis in (1, 2):  # interleaved: frequency j follows axis j % 3 within 3 * section[axis]
            idx = slice(axis, 3 * section[axis], 3)
            freqs[..., idx] = per_axis[axis][..., idx]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, dim]
    return emb.transpose(0, 1)[:, :, None, :].contiguous()


def causal_padding_mask(padding: Tensor | None, batch: int, seq: int, device: torch.device) -> Tensor:
    """megatron's boolean mask ``[B, 1, S, S]`` (True = not attended): causal plus key padding."""
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1)
    mask = causal[None, None].expand(batch, 1, seq, seq)
    if padding is not None:
        mask = mask | ~padding.bool()[:, None, None, :]
    return mask


class MegatronQwen3TextModel(nn.Module):
    """A HF Qwen3 text model's drop-in whose decoder layers are megatron-core's (see module doc)."""

    def __init__(self, hf_text_model: nn.Module, opts: TextStackOptions) -> None:
        super().__init__()
        from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

        self.config = hf_text_model.config
        self.opts = opts
        dtype = next(hf_text_model.parameters()).dtype
        self.megatron_config = transformer_config(self.config, opts, dtype)
        self.embed_tokens = hf_text_model.embed_tokens
        blocks = TransformerBlockSubmodules(layer_specs=[layer_spec()] * self.megatron_config.num_layers,
                                            layer_norm=TPRMSNorm)  # the final norm, marked like the others
        self.decoder = TransformerBlock(self.megatron_config, blocks, post_process=True, pre_process=True)
        from megatron.core import parallel_state as ps

        shard = hf_to_megatron(hf_text_model.state_dict(), self.config, ps.get_tensor_model_parallel_rank(),
                               ps.get_tensor_model_parallel_world_size())
        missing, unexpected = self.decoder.load_state_dict(shard, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise RuntimeError(f"HF -> megatron conversion left missing {missing[:5]} / unexpected {unexpected[:5]}")
        mark_shards(self.decoder)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def _positions(self, position_ids: Tensor | None, b: int, s: int, device: torch.device) -> Tensor:
        if position_ids is None:
            position_ids = torch.arange(s, device=device)[None].expand(b, s)
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:  # Qwen3-VL: text row, then t/h/w
            position_ids = position_ids[1:]
        if position_ids.ndim == 2 and getattr(self.config, "model_type", "") == "qwen3_vl_text":
            position_ids = position_ids[None].expand(3, b, s)
        return position_ids

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                visual_pos_masks: Tensor | None = None, deepstack_visual_embeds: list[Tensor] | None = None,
                output_hidden_states: bool | None = None, **_: Any) -> Any:
        from megatron.core import tensor_parallel
        from transformers.modeling_outputs import BaseModelOutputWithPast

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        b, s, h = inputs_embeds.shape
        tp = self.opts.tensor_parallel_size
        sp = bool(self.megatron_config.sequence_parallel)
        pad = (-s) % tp if sp else 0  # sequence parallel splits the sequence evenly over TP
        padding = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError("MegatronQwen3TextModel takes a 2D padding mask (1 = token), not a 4D mask")
        rope = rotary_angles(self.config, self._positions(position_ids, b, s, inputs_embeds.device))
        if pad:
            inputs_embeds = F.pad(inputs_embeds, (0, 0, 0, pad))
            padding = F.pad(padding if padding is not None else inputs_embeds.new_ones(b, s), (0, pad))
            rope = F.pad(rope, (0, 0, 0, 0, 0, 0, 0, pad))
        full = s + pad
        mask = causal_padding_mask(padding, b, full, inputs_embeds.device)

        deepstack = {}
        if deepstack_visual_embeds is not None:
            for i, embeds in enumerate(deepstack_visual_embeds):
                add = inputs_embeds.new_zeros(b, full, h)
                add = add.masked_scatter(F.pad(visual_pos_masks, (0, pad))[..., None].expand_as(add), embeds.to(add.dtype))
                deepstack[i] = add

        def local(x: Tensor) -> Tensor:  # [B, S, H] -> this rank's [S(/TP), B, H]
            x = x.transpose(0, 1).contiguous()
            return tensor_parallel.scatter_to_sequence_parallel_region(x) if sp else x

        def whole(x: Tensor) -> Tensor:  # inverse of ``local``; its backward keeps this rank's slice
            if sp:
                x = tensor_parallel.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
            return x.transpose(0, 1)[:, :s]

        hidden = local(inputs_embeds)
        states = [whole(hidden)] if output_hidden_states else []
        for i, layer in enumerate(self.decoder.layers):
            if self.opts.recompute and self.training:
                hidden = tensor_parallel.checkpoint(functools.partial(_run_layer, layer), False, hidden, mask, rope)
            else:
                hidden = _run_layer(layer, hidden, mask, rope)
            if output_hidden_states:
                states.append(whole(hidden))
            if i in deepstack:
                hidden = hidden + local(deepstack[i])
        last = whole(self.decoder.final_layernorm(hidden))
        if output_hidden_states:
            states[-1] = last  # HF reports the final layer's state after the norm
        return BaseModelOutputWithPast(last_hidden_state=last, hidden_states=tuple(states) if output_hidden_states else None)


SHARD_DIMS = {"linear_qkv.weight": 0, "linear_fc1.weight": 0, "linear_proj.weight": 1, "linear_fc2.weight": 1}
"""TP-sharded decoder weights and the dimension they are split along (column-parallel: 0, row: 1)."""


def mark_shards(decoder: nn.Module) -> None:
    """Mark the TP-sharded weights as megatron does when it initializes them itself (it does not
    with ``perform_initialization=False``): DeepSpeed's gradient norm counts an unmarked parameter
    on TP rank 0 only, as a replicated one, so the clipping norm would miss the other shards."""
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    for name, p in decoder.named_parameters():
        dim = next((d for suffix, d in SHARD_DIMS.items() if name.endswith(suffix)), None)
        if dim is not None:
            set_tensor_model_parallel_attributes(p, True, dim, 1)


def _run_layer(layer: nn.Module, hidden: Tensor, mask: Tensor, rope: Tensor) -> Tensor:
    out, _ = layer(hidden, attention_mask=mask, rotary_pos_emb=rope)
    return out


# -- weights ---------------------------------------------------------------------------------------

def _layer_keys(text_cfg: Any) -> tuple[int, int, int, int]:
    return text_cfg.num_attention_heads, text_cfg.num_key_value_heads, text_cfg.head_dim, text_cfg.num_hidden_layers


def hf_to_megatron(hf: dict[str, Tensor], text_cfg: Any, tp_rank: int, tp_size: int) -> dict[str, Tensor]:
    """TP rank ``tp_rank``'s megatron decoder weights from a HF text model's state dict (keys
    ``layers.N.*`` and ``norm.weight``, as ``Qwen3Model.state_dict()`` has them)."""
    nq, nkv, d, layers = _layer_keys(text_cfg)
    if nkv % tp_size or nq % tp_size:
        raise ValueError(f"TP={tp_size} must divide the {nq} query heads and {nkv} KV heads")
    per_group = nq // nkv
    out: dict[str, Tensor] = {}

    def rows(w: Tensor) -> Tensor:
        return w.chunk(tp_size, dim=0)[tp_rank]

    def cols(w: Tensor) -> Tensor:
        return w.chunk(tp_size, dim=1)[tp_rank]

    for i in range(layers):
        src, dst = f"layers.{i}.", f"layers.{i}."
        q = hf[src + "self_attn.q_proj.weight"].view(nkv, per_group * d, -1)
        k = hf[src + "self_attn.k_proj.weight"].view(nkv, d, -1)
        v = hf[src + "self_attn.v_proj.weight"].view(nkv, d, -1)
        qkv = torch.cat([q, k, v], dim=1).reshape(nkv * (per_group + 2) * d, -1)
        out[dst + "self_attention.linear_qkv.weight"] = rows(qkv).clone()
        out[dst + "self_attention.linear_proj.weight"] = cols(hf[src + "self_attn.o_proj.weight"]).clone()
        out[dst + "self_attention.q_layernorm.weight"] = hf[src + "self_attn.q_norm.weight"].clone()
        out[dst + "self_attention.k_layernorm.weight"] = hf[src + "self_attn.k_norm.weight"].clone()
        out[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"].clone()
        out[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"].clone()
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([rows(hf[src + "mlp.gate_proj.weight"]),
                                                        rows(hf[src + "mlp.up_proj.weight"])]).clone()
        out[dst + "mlp.linear_fc2.weight"] = cols(hf[src + "mlp.down_proj.weight"]).clone()
    out["final_layernorm.weight"] = hf["norm.weight"].clone()
    return out


def megatron_to_hf(shards: list[dict[str, Tensor]], text_cfg: Any) -> dict[str, Tensor]:
    """The HF text model's decoder weights (``layers.N.*``, ``norm.weight``) from every TP rank's
    megatron decoder state dict, in TP rank order: the exact inverse of :func:`hf_to_megatron`."""
    nq, nkv, d, layers = _layer_keys(text_cfg)
    per_group = nq // nkv
    out: dict[str, Tensor] = {}
    for i in range(layers):
        src, dst = f"layers.{i}.", f"layers.{i}."

        def cat(name: str, dim: int, src: str = src) -> Tensor:
            return torch.cat([s[src + name] for s in shards], dim=dim)

        qkv = cat("self_attention.linear_qkv.weight", 0).view(nkv, (per_group + 2) * d, -1)
        q, k, v = qkv.split([per_group * d, d, d], dim=1)
        out[dst + "self_attn.q_proj.weight"] = q.reshape(nq * d, -1).clone()
        out[dst + "self_attn.k_proj.weight"] = k.reshape(nkv * d, -1).clone()
        out[dst + "self_attn.v_proj.weight"] = v.reshape(nkv * d, -1).clone()
        out[dst + "self_attn.o_proj.weight"] = cat("self_attention.linear_proj.weight", 1)
        out[dst + "self_attn.q_norm.weight"] = shards[0][src + "self_attention.q_layernorm.weight"].clone()
        out[dst + "self_attn.k_norm.weight"] = shards[0][src + "self_attention.k_layernorm.weight"].clone()
        out[dst + "input_layernorm.weight"] = shards[0][src + "input_layernorm.weight"].clone()
        out[dst + "post_attention_layernorm.weight"] = shards[0][src + "pre_mlp_layernorm.weight"].clone()
        gate_up = [s[src + "mlp.linear_fc1.weight"].chunk(2, dim=0) for s in shards]
        out[dst + "mlp.gate_proj.weight"] = torch.cat([g for g, _ in gate_up])
        out[dst + "mlp.up_proj.weight"] = torch.cat([u for _, u in gate_up])
        out[dst + "mlp.down_proj.weight"] = cat("mlp.linear_fc2.weight", 1)
    out["norm.weight"] = shards[0]["final_layernorm.weight"].clone()
    return out
