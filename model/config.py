"""Typed model configuration: the recipe base ``ModelConfig`` and the component configs recipes share
(backbone, frame encoder, quantizer, LAM, flow head, latent targets).

``type`` selects the recipe (draccus choice registry, as LeRobot). Recipe configs live in their
folders (``model/recipes/<name>/config.py``) and register with ``model.registry.register_recipe``;
importing this module imports them all, so it is enough for the config loader to know every recipe.

Defaults are the quickstart's tiny CPU sizes. Full-size reference values (Moto, GR00T N1.5 /
LARA) are given in the field docstrings and belong in the YAML recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import draccus

from lavla.model.registry import InputSpec, Stated

from lavla.model.backbone_config import HFBackboneConfig


@dataclass
class ModelConfig(draccus.ChoiceRegistry):
    """Base of every recipe config. Select a recipe with ``type: <name>`` in YAML or ``--model.type``."""

    def input_spec(self) -> InputSpec:
        """The batch shapes the recipe consumes, with the model fields stating them (checked against
        the data config once, when the model is built)."""
        return InputSpec()


def image_sizes_stated(backbone: "BackboneConfig", lam: "LamConfig | None" = None, lam_field: str = "lam") -> Stated:
    """The model fields that fix ``data.image_size`` for a VL recipe: the tiny backbone's (a Hugging Face
    backbone resizes frames itself) and, where the recipe runs one, its LAM's."""
    tiny = (("backbone.image_size", backbone.image_size),) if backbone.kind == "tiny" else ()
    return tiny + (((f"{lam_field}.image_size", lam.image_size),) if lam is not None else ())


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class BackboneConfig:
    """Vision-language backbone: the tiny CPU stand-in (default) or a Hugging Face VLM (``kind: hf``)."""

    kind: str = "tiny"
    """``tiny`` (patch + byte embeddings and a few transformer layers) or ``hf`` (``hf`` section)."""
    hf: HFBackboneConfig = field(default_factory=HFBackboneConfig)
    """The Hugging Face model (``kind: hf``); the tiny fields below are then ignored."""
    image_size: int = 64
    """Side of the square input images; must equal data.image_size."""
    patch_size: int = 8
    """Patch side of the image tokenizer."""
    dim: int = 64
    """Token width (full size: 2048, the Qwen3-VL / Eagle hidden size)."""
    depth: int = 2
    """Transformer layers over [image, wrist, text] tokens (full size: VLM truncated at layer 12)."""
    heads: int = 4
    """Attention heads."""
    max_text_len: int = 64
    """Instruction bytes kept (UTF-8, padded, masked). Longer instructions are truncated, and two
    instructions that truncate to the same bytes are refused at the first batch holding both
    (``model.instructions.InstructionCollisionError``): the policy could not tell them apart."""
    max_queries: int = 128
    """Learned query embeddings available (each query position has its own, so the recipe's queries,
    one per action step and slot, start distinct); a recipe asking for more is an error."""
    use_wrist: bool = True
    """Encode ``image_wrist`` too (always run; masked out where ``has_wrist`` is False)."""
    frozen: bool = False
    """Freeze the backbone (requires_grad=False, run without grad); the real VLM is frozen."""

    def __post_init__(self) -> None:
        _check(self.kind in ("tiny", "hf"), f"backbone.kind must be 'tiny' or 'hf', got {self.kind!r}")
        _check(self.kind != "hf" or bool(self.hf.pretrained_path), "backbone.kind=hf needs backbone.hf.pretrained_path")
        _check(self.image_size % self.patch_size == 0, f"backbone.image_size {self.image_size} % patch_size {self.patch_size} != 0")
        _check(self.dim % self.heads == 0, f"backbone.dim {self.dim} not divisible by heads {self.heads}")
        _check(self.max_text_len >= 1 and self.max_queries >= 1, "backbone.max_text_len and max_queries must be >= 1")


@dataclass
class FrameEncoderConfig:
    """Per-frame encoder of the LAM: a tiny trainable ViT (CPU default) or a frozen Hugging Face model."""

    kind: str = "tiny"
    """``tiny`` (patch embedding + a few blocks, trainable unless ``frozen``) or ``hf`` (a frozen
    transformers ViTModel / Dinov2Model / ViTMAEModel loaded with ``from_pretrained(pretrained_path)``)."""
    pretrained_path: str = ""
    """Local directory of the HF model (``kind: hf``): config.json + weights, optionally preprocessor_config.json."""
    input_size: int = 0
    """Side the frames are resized to for the HF model; 0 = its config.image_size (DINOv2: set 224)."""
    dim: int = 64
    """Token width of the tiny encoder (``kind: hf`` takes the model's hidden size; Moto: MAE-Large 1024)."""
    depth: int = 1
    """Transformer layers after the patch embedding (0 = patch embedding only)."""
    heads: int = 4
    """Attention heads."""
    frozen: bool = False
    """Freeze the tiny encoder (``hf`` encoders are always frozen, as Moto's MAE and UniVLA's DINOv2)."""

    def __post_init__(self) -> None:
        _check(self.kind in ("tiny", "hf"), f"encoder.kind must be 'tiny' or 'hf', got {self.kind!r}")
        _check(self.kind != "hf" or bool(self.pretrained_path), "encoder.kind=hf needs encoder.pretrained_path")


@dataclass
class QuantizerConfig:
    """Vector quantizer of the LAM latent (model/quantizer.py).

    Reference settings: Moto/LARA ``st`` 128 codes x 32-d, beta 0.25, no restart; LAPA ``nsvq`` 8 x 32
    with the restart schedule [[100,10],[1000,100],[5000,500]]; UniVLA ``st`` 16 x 128, beta 0.25.
    """

    kind: str = "st"
    """``st`` (straight-through, gradient-learned codebook), ``ema`` (EMA codebook, commitment loss
    only) or ``nsvq`` (LAPA noise substitution, no quantizer loss)."""
    num_codes: int = 16
    """Codebook size K (a tiny CPU LAM used ~10 of 128 codes; 16 is UniVLA's size)."""
    codebook_dim: int = 0
    """Lookup dimension; 0 = the latent dim, smaller = quantize a Linear projection (low-dim codes)."""
    cosine: bool = False
    """l2-normalize inputs and codes before the lookup (cosine-similarity codebook)."""
    beta: float = 0.25
    """Weight of the commitment term ||z - sg(q)||^2 (st, ema)."""
    ema_decay: float = 0.99
    """EMA decay of cluster sizes and code sums (ema)."""
    ema_eps: float = 1e-5
    """Laplace smoothing of the EMA cluster sizes (ema)."""
    restart_window: int = 100
    """Training forwards between dead-code restarts once past ``restart_schedule`` (trainer-driven; 0 disables)."""
    restart_schedule: list[tuple[int, int]] = field(default_factory=list)
    """(until_step, window) pairs used in order before ``restart_window`` applies, e.g. LAPA's
    [[100, 10], [1000, 100], [5000, 500]] with restart_window 0 (frequent early, then none)."""
    dead_threshold: float = 1.0
    """A code used fewer times than this within the window (summed over ranks) is dead."""
    restart_noise: float = 0.1
    """Jitter added to restarted codes, relative to the donor cluster's spread (codes) or the
    candidates' std (batch)."""
    restart_from: str = "codes"
    """``codes``: split heavily used clusters (rank-identical: required with several ranks, whose
    restarts are never broadcast); ``batch``: jump to this process's latest encoder outputs
    (single-process runs only; refused once statistics came from several ranks)."""

    def __post_init__(self) -> None:
        _check(self.kind in ("st", "ema", "nsvq"), f"quantizer.kind must be st, ema or nsvq, got {self.kind!r}")
        _check(self.restart_from in ("batch", "codes"), f"quantizer.restart_from must be batch or codes, got {self.restart_from!r}")
        _check(self.kind != "ema" or self.restart_from == "codes",
               "quantizer.kind=ema needs restart_from=codes (its buffer codebook is never broadcast)")
        _check(self.num_codes >= 2, f"quantizer.num_codes must be >= 2, got {self.num_codes}")
        _check(0.0 < self.ema_decay < 1.0, f"quantizer.ema_decay must be in (0, 1), got {self.ema_decay}")


@dataclass
class LamQuantizerConfig(QuantizerConfig):
    """QuantizerConfig with the CPU defaults of the Moto-style LAM (a subclass, not a default_factory,
    so a partial YAML ``quantizer:`` section keeps them). On the synthetic world (tests/test_lam_probe.py)
    LAPA's NSVQ gave the most reliable motion tokens: without a commitment pull the tiny LAM's latent
    keeps its motion information (direction-probe accuracy over seeds: straight-through 0.32-0.54, NSVQ 0.43-0.57,
    chance 0.29)."""

    kind: str = "nsvq"
    """``st``, ``ema`` or ``nsvq`` (Moto: st)."""
    restart_schedule: list[tuple[int, int]] = field(default_factory=lambda: [(100, 10), (300, 50)])
    """(until_step, window) pairs before ``restart_window`` applies: every 10 steps until 100, every 50 until 300."""
    restart_noise: float = 0.3
    """Jitter of split codes relative to the donor cluster's spread (wide: copies must separate)."""


@dataclass
class LamConfig:
    """Moto/LARA-style latent action model: frame encoder -> M-Former -> VQ -> pixel decoder."""

    image_size: int = 64
    """Side of the square input frames; must equal data.image_size (Moto: 224)."""
    patch_size: int = 8
    """Patch side for the frame encoder and the decoder (Moto decoder: 16)."""
    encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    """Frame encoder."""
    dim: int = 64
    """M-Former width (Moto: 768)."""
    depth: int = 2
    """M-Former layers (Moto: 4)."""
    heads: int = 4
    """M-Former attention heads (Moto: 12)."""
    num_queries: int = 8
    """Learnable latent-action queries Q (Moto/LARA: 8)."""
    mformer_target: str = "difference"
    """Target-frame stream of the M-Former: ``frame`` (Moto) or ``difference`` (target - cond tokens;
    same information, static content cancels, so a small LAM learns motion instead of ignoring its latent)."""
    latent_dim: int = 32
    """Per-query continuous latent Dl after the tanh down-projection (Moto/LARA: 32)."""
    quantizer: LamQuantizerConfig = field(default_factory=LamQuantizerConfig)
    """Vector quantizer of the Q x latent_dim latent (Moto: st, 128 codes, beta 0.25, no restarts; CPU: nsvq, 16)."""
    decoder: str = "conv"
    """Pixel decoder: ``vit`` (Moto: a ViT over x_t patches with the latent added to every patch) or
    ``conv`` (latent-conditioned 3x3 convs at pixel resolution; a small one learns to use its latent fast on CPU)."""
    decoder_dim: int = 32
    """Pixel decoder width: ViT token width or conv channels (Moto: 768)."""
    decoder_depth: int = 2
    """Pixel decoder layers: ViT blocks or hidden conv layers (Moto: 12)."""
    decoder_heads: int = 4
    """Pixel decoder attention heads, ``vit`` only (Moto: 12)."""
    decoder_conditioning: str = "bias"
    """How the latent enters the ``conv`` decoder: ``bias`` (a per-channel bias after the first conv) or
    ``film`` (a per-channel scale and shift after every conv, so the latent can switch the local edge
    detectors that "move this edge left/up" needs, instead of reaching them through nonlinearities)."""
    decoder_residual: bool = True
    """Decode x_{t+H} as x_t + a predicted change, so static pixels cost nothing and the loss is the
    motion (Moto: False, its 12-layer decoder re-renders the whole frame)."""
    recon_weight: float = 1.0
    """Weight of the pixel MSE in the LAM loss (vq loss has weight 1, as in Moto)."""
    motion_weight: float = 0.0
    """Extra weight of the pixels that change between x_t and x_{t+H} in the pixel MSE (weight
    ``1 + motion_weight`` there, 1 elsewhere, normalized by the total weight). In a tabletop frame
    only a few percent of the pixels move, so copying x_t already scores a low plain MSE and a small
    LAM learns to ignore its latent; 0 = plain MSE (Moto)."""

    def __post_init__(self) -> None:
        _check(self.motion_weight >= 0.0, f"lam.motion_weight must be >= 0, got {self.motion_weight}")
        _check(self.image_size % self.patch_size == 0, f"lam.image_size {self.image_size} % patch_size {self.patch_size} != 0")
        _check(self.dim % self.heads == 0, f"lam.dim {self.dim} not divisible by heads {self.heads}")
        _check(self.decoder_dim % self.decoder_heads == 0, f"lam.decoder_dim {self.decoder_dim} not divisible by decoder_heads")
        _check(self.decoder in ("vit", "conv"), f"lam.decoder must be 'vit' or 'conv', got {self.decoder!r}")
        _check(self.decoder_conditioning in ("bias", "film"),
               f"lam.decoder_conditioning must be 'bias' or 'film', got {self.decoder_conditioning!r}")
        _check(self.mformer_target in ("frame", "difference"), f"lam.mformer_target must be 'frame' or 'difference', got {self.mformer_target!r}")


@dataclass
class FlowHeadConfig:
    """GR00T-style flow-matching DiT action head (N1.5 / LARA sizes in brackets)."""

    action_horizon: int = 8
    """N action tokens; must equal data.action_horizon [16]."""
    action_dim: int = 7
    """A, padded action width; must equal data.max_action_dim [32]."""
    proprio_dim: int = 8
    """P, padded proprio width; must equal data.max_proprio_dim [64]."""
    num_embodiments: int = 4
    """Rows of the per-embodiment encoder/decoder weights; embodiment_id < this [32]."""
    hidden_dim: int = 64
    """Hidden width of the embodiment-specific MLPs [1024]."""
    dim: int = 96
    """DiT width = heads x head_dim [1536 = 32 x 48]."""
    depth: int = 4
    """DiT blocks; even blocks cross-attend to VL tokens, odd blocks self-attend [16]."""
    heads: int = 4
    """DiT attention heads [32]."""
    output_dim: int = 64
    """DiT output width fed to the action decoder [1024]."""
    dropout: float = 0.0
    """Dropout in the DiT [0.2]."""
    num_inference_steps: int = 4
    """Euler steps in predict_action [4]."""
    noise_s: float = 0.999
    """s in tau = (s - Beta(alpha, 1)) / s."""
    time_beta_alpha: float = 1.5
    """alpha of the Beta(alpha, 1) time distribution [1.5]."""
    num_timestep_buckets: int = 1000
    """tau is bucketed as int(tau * buckets) for the timestep embedding [1000]."""

    def __post_init__(self) -> None:
        _check(self.dim % self.heads == 0, f"head.dim {self.dim} not divisible by heads {self.heads}")
        _check(self.depth >= 1, "head.depth must be >= 1")
        _check(0.0 < self.noise_s <= 1.0, f"head.noise_s must be in (0, 1], got {self.noise_s}")


@dataclass
class LatentTargetConfig:
    """Where the latent-action targets come from."""

    source: str = "online"
    """``online``: a LAM inside the model encodes (x_t, x_{t+H}) every step: one latent step per sample,
    human video included; ``offline``: the batch's ``latent_ids`` / ``latent_emb`` read from the
    zarr label store at ``data.latent_labels`` (one latent step per action step, as Pixels-to-Tokens)."""
    lam: LamConfig = field(default_factory=LamConfig)
    """The online LAM (must match the checkpoint in ``lam_init``)."""
    lam_init: str = ""
    """Export directory of a trained LAM (``python -m lavla.launcher.export_policy`` of a ``type: lam`` run)
    whose ``lam.*`` weights initialise the online LAM; empty = random init (tests only)."""
    lam_trainable: bool = False
    """Train the online LAM with the policy (Pixels-to-Tokens and LAPA keep it frozen)."""
    lam_weight: float = 0.0
    """Weight of the LAM's own loss when it trains."""
    codes_per_step: int = 0
    """Q, latent tokens per step; 0 = the online LAM's ``num_queries`` (UniVLA/FPT: 4, Moto: 8)."""
    num_codes: int = 0
    """K, codebook size; 0 = the online LAM's ``quantizer.num_codes`` (FPT: 16, LAPA: 8)."""
    code_dim: int = 0
    """D of the latent embedding (alignment target); 0 = the online LAM's ``latent_dim`` (FPT: 128)."""

    def __post_init__(self) -> None:
        _check(self.source in ("online", "offline"), f"latent.source must be online or offline, got {self.source!r}")


# Every recipe folder's config.py registers its ``type:`` (model.registry); importing them here
# means loading a config knows every recipe, without importing any model code.
from lavla.model.registry import discover_recipes  # noqa: E402,I001

discover_recipes()
