"""Hugging Face model directories written offline, without weights: the full-size architecture of
Qwen3-VL-2B-Instruct for throughput and memory benchmarks (``trainer.bench_mfu --recipe baseline
--full-size``) where the real weights cannot be downloaded.

A directory holds what a real Qwen3-VL directory holds (config.json, a Qwen2 byte-level BPE tokenizer
with Qwen's special tokens, image and video processor configs, a chat template), so the real
``from_pretrained`` code path builds it. Nothing is downloaded: the tokenizer is trained here on a
few sentences with ``tokenizers``. The tests' tiny random models (``tests/model/hf_tiny_models.py``) are
written with the same pieces.
"""

from __future__ import annotations

import json
from pathlib import Path

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


QWEN3_VL_2B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    tie_word_embeddings=True,
)
"""Text model of Qwen3-VL-2B-Instruct (its published config.json): Qwen3-1.7B-sized, 28 x 2048, GQA 16/8."""
QWEN3_VL_2B_VISION = dict(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=2048,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[5, 11, 17],
)
"""Vision tower of Qwen3-VL-2B-Instruct: 24 blocks of 1024, patch 16, 2x2 merge, DeepStack after 5/11/17."""
QWEN3_VL_8B_TEXT = dict(QWEN3_VL_2B_TEXT, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
"""Text model of Qwen3-VL-8B-Instruct: Qwen3-8B-sized, 36 x 4096, GQA 32/8 heads of 128, MLP 12288, untied."""
QWEN3_VL_8B_VISION = dict(QWEN3_VL_2B_VISION, depth=27, hidden_size=1152, intermediate_size=4304,
                          out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24])
"""Vision tower of Qwen3-VL-8B-Instruct: 27 blocks of 1152, DeepStack after 8/16/24 (8.77 B parameters in all)."""
ARCHITECTURES = {"qwen3-vl-2b": (QWEN3_VL_2B_TEXT, QWEN3_VL_2B_VISION), "qwen3-vl-8b": (QWEN3_VL_8B_TEXT, QWEN3_VL_8B_VISION)}
"""Weight-less architectures ``write_qwen3_vl_architecture`` can write, by name."""


def _write_qwen3_vl(path: Path, text: dict, vision: dict, *, min_pixels: int, max_pixels: int,
                    weights: bool, seed: int) -> None:
    """Config, tokenizer, processors and chat template of a Qwen3-VL directory; weights if asked."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = {"vocab_size": len(tok), **text, "pad_token_id": tok.pad_token_id}
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(vision),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    if weights:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Qwen3VLForConditionalGeneration(config)
        model.save_pretrained(path)
    else:
        config.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    patch, merge, temporal = vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]
    # The image processor (PIL backend here; transformers picks the torchvision one where installed).
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=temporal,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
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
        "patch_size": patch,
        "merge_size": merge,
        "temporal_patch_size": temporal,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels * 8},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_sample_frames": False,
    }
    (path / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2, sort_keys=True))


def write_qwen3_vl_2b_architecture(path: str | Path) -> Path:
    """Qwen3-VL-2B-Instruct without weights (see :func:`write_qwen3_vl_architecture`)."""
    return write_qwen3_vl_architecture(path, "qwen3-vl-2b")


def write_qwen3_vl_architecture(path: str | Path, name: str = "qwen3-vl-2b") -> Path:
    """Write a Qwen3-VL-Instruct directory *without weights* to ``path``; returns it. ``name``: a key
    of ``ARCHITECTURES`` (the 2B the Pixels-to-Tokens baseline uses, or the 8B).

    config.json has the real model's sizes (e.g. ``QWEN3_VL_2B_TEXT`` / ``QWEN3_VL_2B_VISION``, 151,936-row
    vocabulary), so ``HFBackboneConfig(load_weights=False)`` builds the full architecture with random
    weights for throughput and memory benchmarks, offline. The tokenizer is this module's small BPE
    with Qwen's special tokens (prompts tokenize into a few more text tokens than Qwen's own BPE), and
    the processor keeps a 224^2 frame at 224^2: 14 x 14 patches, 49 merged tokens, as Pixels-to-Tokens
    observed (../shared/anchors/models.md section 1).
    """
    path = Path(path)
    if (path / "config.json").exists() and (path / "preprocessor_config.json").exists():
        return path
    import os
    import shutil

    # Written aside and renamed: complete or absent, also when several ranks write it at once.
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    text, vision = ARCHITECTURES[name]
    _write_qwen3_vl(tmp, text, vision, min_pixels=32 * 32, max_pixels=1024 * 1024, weights=False, seed=0)
    try:
        tmp.rename(path)
    except OSError:  # another rank got there first
        if not (path / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return path
