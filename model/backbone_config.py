"""Config of the Hugging Face VLM backbone (Qwen3-VL or another image-text-to-text model)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HFBackboneConfig:
    """A transformers image-text-to-text model loaded with ``from_pretrained(pretrained_path)``.

    Pixels-to-Tokens reference: Qwen3-VL-2B-Instruct, frozen + LoRA r=64, alpha=16, dropout 0 on all
    linear layers, primary + wrist image at 224^2, placeholder tokens after the instruction.
    """

    pretrained_path: str = ""
    """Local directory with config.json, weights, tokenizer and processor files (no downloads)."""
    load_weights: bool = True
    """False builds the architecture from config.json only (loading an export whose safetensors hold the weights)."""
    tuning: str = "lora"
    """``frozen`` (no gradients), ``lora`` (peft adapters on ``lora_target``) or ``full``."""
    lora_r: int = 64
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target: str = "all-linear"
    """peft ``target_modules``: ``all-linear`` or a comma-separated list of module names."""
    image_size: int = 224
    """Side the uint8 camera frames are resized to before the processor (FPT: 224)."""
    use_wrist: bool = True
    """Put the wrist image in the prompt too (where ``has_wrist``; a black frame otherwise, fixed shapes)."""
    prompt: str = "What action should the robot take to {instruction}? Please predict the next {horizon} robot actions:"
    """User message around the lowercased instruction; ``{horizon}`` is the action chunk length."""
    placeholder: str = "🔍"
    """Token repeated after the prompt; the recipe's action/latent queries are the last ones."""
    max_length: int = 0
    """Right-pad every prompt to this many tokens (fixed shapes; 0 = longest in the batch). A longer
    prompt is an error: truncating would cut image tokens or queries."""
    torch_dtype: str = "float32"
    """Dtype the weights are loaded in (``bfloat16`` on GPU)."""
    attn_implementation: str = "sdpa"
    """transformers attention backend (``sdpa``, ``flash_attention_2``, ``eager``)."""
    extra_tokens: list[str] = field(default_factory=list)
    """Tokens added to the vocabulary at build time (recipes add their own, e.g. ``<ACT_i>``, with
    ``add_tokens``); their embedding and LM-head rows train under LoRA. A policy export lists here every
    token the backbone added (the placeholder too when it had to be added), so the rebuilt model has
    the same vocabulary and trainable rows."""

    def __post_init__(self) -> None:
        if self.tuning not in ("frozen", "lora", "full"):
            raise ValueError(f"backbone.hf.tuning must be frozen, lora or full, got {self.tuning!r}")
        if self.lora_r < 1:
            raise ValueError(f"backbone.hf.lora_r must be >= 1, got {self.lora_r}")
