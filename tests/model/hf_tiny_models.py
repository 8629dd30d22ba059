"""Tiny random Qwen3-VL and LLaVA directories for offline tests of ``model.hf_vlm``: the files a real
directory holds, with a vocabulary of a few hundred tokens, a 64-wide text model and a 1-block
vision tower, so ``from_pretrained(path)`` runs the real loading code in a second."""

from __future__ import annotations

from pathlib import Path

from lavla.model.hf_architecture import _build_tokenizer, _write_qwen3_vl

_WRITTEN: dict[str, Path] = {}
"""Directories written in this process, by their parameters (tests reuse them)."""

PATCH_SIZE = 4
"""Vision patch side of the tiny model (a 32x32 frame gives 8x8 patches)."""
MERGE_SIZE = 2
"""Spatial merge of the tiny model (2x2 patches -> one LM token: 16 tokens per 32x32 frame)."""
TEMPORAL_PATCH_SIZE = 2
"""Frames per temporal patch (an image is repeated to fill it, as in Qwen-VL)."""


def write_tiny_qwen3_vl(path: str | Path, *, num_layers: int = 3, tie_word_embeddings: bool = False, seed: int = 0) -> Path:
    """Write a tiny random ``Qwen3VLForConditionalGeneration`` checkpoint to ``path``; returns it.

    Text model: ``num_layers`` layers of width 64 (4 heads, 2 KV heads, head_dim 16, M-RoPE);
    vision tower: 1 block of width 32, patch 4, merge 2, deepstack after block 0. Calling again
    with the same arguments in the same process returns the directory already written.
    """
    path = Path(path)
    key = f"{path.resolve()}|{num_layers}|{tie_word_embeddings}|{seed}"
    if key in _WRITTEN and (path / "config.json").exists():
        return _WRITTEN[key]
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        tie_word_embeddings=tie_word_embeddings,
    )
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        out_hidden_size=64,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    _write_qwen3_vl(path, text, vision, min_pixels=8 * 8, max_pixels=256 * 256, weights=True, seed=seed)
    _WRITTEN[key] = path
    return path


LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
"""A LLaVA-1.5-like chat layout: ``USER: <image>...text\\nASSISTANT:``."""


def write_tiny_llava(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random ``LlavaForConditionalGeneration`` (CLIP tower, Llama text model) to ``path``.

    A second image-text-to-text family for the backbone's generic path: its processor is built by
    ``AutoProcessor`` without torchvision. 32x32 frames, patch 8 -> 16 image tokens (CLS dropped).
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = Path(path)
    key = f"llava|{path.resolve()}|{seed}"
    if key in _WRITTEN and (path / "config.json").exists():
        return _WRITTEN[key]
    path.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.save_pretrained(path)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    processor.save_pretrained(path)
    _WRITTEN[key] = path
    return path
