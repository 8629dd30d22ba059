"""Config of the L1 regression action head of the Pixels-to-Tokens recipes (model/l1_head.py).

Kept free of ``model.config`` imports: ``model.config`` imports the VLA configs, which import this
module, so a dependency back would make the import order matter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class L1HeadConfig:
    """VLA-Adapter-style L1 regression head. Defaults are tiny CPU sizes; the Pixels-to-Tokens
    (Qwen3-VL-2B) values are in brackets."""

    num_blocks: int = 2
    """Head blocks; block i reads VLM hidden state ``i + 1`` of the last ``num_blocks + 1`` [11 blocks,
    reading the last 12 hidden states]."""
    dim: int = 64
    """Width of the head's action-slot tokens [2048, the VLM hidden size]."""
    heads: int = 4
    """Attention heads of every head attention [8]."""
    mlp_ratio: float = 4.0
    """MLP hidden width / dim in each block [1.0: VLA-Adapter's feed-forward is one dim x dim Linear]."""
    action_horizon: int = 8
    """N, action steps regressed per sample; must equal data.action_horizon [LIBERO: 8]."""
    action_dim: int = 7
    """A, padded action width; must equal data.max_action_dim [LIBERO: 7]."""
    proprio_dim: int = 8
    """P, padded proprio width; must equal data.max_proprio_dim [LIBERO: 8]."""
    dropout: float = 0.0
    """Dropout in the head's attentions and MLPs [0.0]."""

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"head.num_blocks must be >= 1, got {self.num_blocks}")
        if self.dim % self.heads:
            raise ValueError(f"head.dim {self.dim} not divisible by head.heads {self.heads}")
        for name in ("action_horizon", "action_dim", "proprio_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"head.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head.dropout must be in [0, 1), got {self.dropout}")
