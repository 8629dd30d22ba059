"""Tiny random Qwen3-VL checkpoints written to disk, for offline tests of ``model.hf_vlm``.

``write_tiny_qwen3_vl(path)`` saves what a real Qwen3-VL directory holds (config.json, safetensors
weights, a Qwen2 byte-level BPE tokenizer with Qwen's special tokens, the image and video processor
configs and a chat template), but with a vocabulary of a few hundred tokens, a 64-wide text model
and a 1-block vision tower, so ``from_pretrained(path)`` runs the real loading code in a second.
Nothing is downloaded: the tokenizer is trained here on a few sentences with ``tokenizers``.
"""

from __future__ import annotations

import json
from pathlib import Path

PATCH_SIZE = 4
"""Vision patch side of the tiny model (a 32x32 frame gives 8x8 patches)."""
MERGE_SIZE = 2
"""Spatial merge of the tiny model (2x2 patches -> one LM token: 16 tokens per 32x32 frame)."""
TEMPORAL_PATCH_SIZE = 2
"""Frames per temporal patch (an image is repeated to fill it, as in Qwen-VL)."""

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen-VL's special tokens after ``<|endoftext|>`` (the processor and config need the vision ones)."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen-VL's chat layout (no default system prompt): image parts become vision_start, image_pad, vision_end."""

_CORPUS = [
    "What action should the robot take to pick up the red block and put it in the bowl?",
    "Please predict the next 8 robot actions:",
    "open the top drawer of the cabinet, close the microwave, push the blue cube to the left",
    "stack the green block on the yellow block; wipe the table; turn on the stove",
    "put the spoon in the cup and move the pot to the right side of the sink",
]

_WRITTEN: dict[str, Path] = {}


def _build_tokenizer():
    """A Qwen2Tokenizer over a byte-level BPE (all 256 bytes + ~100 merges) with Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_tiny_qwen3_vl(path: str | Path, *, num_layers: int = 3, tie_word_embeddings: bool = False, seed: int = 0) -> Path:
    """Write a tiny random ``Qwen3VLForConditionalGeneration`` checkpoint to ``path``; returns it.

    Text model: ``num_layers`` layers of width 64 (4 heads, 2 KV heads, head_dim 16, M-RoPE);
    vision tower: 1 block of width 32, patch 4, merge 2, deepstack after block 0. Calling again
    with the same arguments in the same process returns the directory already written.
    """
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    key = f"{path.resolve()}|{num_layers}|{tie_word_embeddings}|{seed}"
    if key in _WRITTEN and (path / "config.json").exists():
        return _WRITTEN[key]
    path.mkdir(parents=True, exist_ok=True)

    tok = _build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
        ),
        vision_config=dict(
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
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # The image processor (PIL backend here; transformers picks the torchvision one where installed).
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        size={"shortest_edge": 8 * 8, "longest_edge": 256 * 256},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image_processor.save_pretrained(path)
    pre = json.loads((path / "preprocessor_config.json").read_text())
    pre["image_processor_type"] = "Qwen2VLImageProcessor"
    pre["processor_class"] = "Qwen3VLProcessor"
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True))
    # Qwen3VLProcessor also loads a video processor (it needs torchvision); written by hand so that
    # AutoProcessor works where torchvision is installed.
    video = {
        "video_processor_type": "Qwen3VLVideoProcessor",
        "processor_class": "Qwen3VLProcessor",
        "patch_size": PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "size": {"shortest_edge": 8 * 8, "longest_edge": 256 * 256 * 8},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_sample_frames": False,
    }
    (path / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2, sort_keys=True))
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
