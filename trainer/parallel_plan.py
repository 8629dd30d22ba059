"""How to lay a model out on N GPUs: per-GPU memory and per-step communication of each tensor-parallel
(TP) x data-parallel (DP) x ZeRO-stage layout, and the layout to use.

The estimates are the standard first-order ones, stated so they can be checked by hand:

* **Model states** (ZeRO paper, mixed-precision Adam): per trainable parameter 2 bytes of bf16
  weights, 2 of bf16 gradients and 12 of fp32 optimizer state (master weights, m, v); a frozen
  parameter holds only its 2 bytes. ZeRO-1 partitions the optimizer state over the DP group,
  ZeRO-2 also the gradients, ZeRO-3 also the weights. TP divides the parameters of the layers it
  shards (attention and MLP matrices) by the TP size before ZeRO partitions what is left.
* **Activations** of one transformer layer (Korthikanti et al., "Reducing Activation Recomputation
  in Large Transformer Models", bf16): ``s*b*h*(34 + 5*a*s/h)`` bytes without TP;
  ``s*b*h*(10 + 24/t + 5*a*s/(h*t))`` with TP t; ``s*b*h*(34/t + 5*a*s/(h*t))`` with TP and
  sequence parallelism; ``2*s*b*h`` with full recomputation (the layer input only).
* **Communication** per optimizer step, bytes sent per GPU by ring collectives (a ring all-reduce
  of B bytes over n ranks sends ``2*(n-1)/n*B``): gradients all-reduced (ZeRO 0-2) or
  reduce-scattered with the weights all-gathered for every forward and backward (ZeRO-3: 1.5x the
  all-reduce volume when everything trains); TP adds four all-reduces of the layer activations
  per layer per micro batch (two forward, two backward).

TP pays when the model states or activations do not fit at TP = 1 even with ZeRO-3 (without
recomputing every layer): it divides both, at the price of activation all-reduces on the critical
path of every layer, so it stays inside a node. The recommendation is printed as the trainer
flags that run it (``parallel.*``, ``trainer.zero.stage``, ``trainer.activation_checkpointing``).

What TP shards is what ``trainer/tensor_parallel`` shards: the Qwen3 / Qwen3-VL text stack's layers
and the DiT head's attention and MLP (:func:`shape_of_model` counts them in a built model).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """A transformer-dominated model, as the planner sees it."""

    name: str
    """Label in the report."""
    tp_params: float
    """Parameters of the layers TP shards (attention and MLP matrices of the language model)."""
    other_params: float
    """Parameters TP replicates (embeddings, norms, vision tower, heads)."""
    trainable_params: float
    """Parameters that train (all of them when fully finetuned; LoRA adapters + heads otherwise)."""
    layers: int
    """Transformer layers whose activations are kept (the language model's)."""
    hidden: int
    """Hidden size h."""
    heads: int
    """Attention heads a."""
    seq: int
    """Tokens per sample s (image + instruction + query tokens)."""

    @property
    def params(self) -> float:
        return self.tp_params + self.other_params


_QWEN3_LM_LAYERS = 28 * (2 * 2048 * 2048 + 2 * 2048 * 1024 + 3 * 2048 * 6144)
_LLAMA2_7B_LAYERS = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)

# The two sizes the issue asks about, from published config.json values.
SHAPES: dict[str, ModelShape] = {
    # The Pixels-to-Tokens baseline at full size (configs/full/baseline.yaml, measured by bench_mfu):
    # 2.877 B parameters, 0.750 B trainable (LoRA r=64 + the 2048-wide L1 head); Qwen3-VL-2B's LM is
    # 28 x 2048 (GQA 16/8 heads of 128, MLP 6144); 205 tokens per sample.
    "qwen3-vl-2b": ModelShape("Qwen3-VL-2B + LoRA + L1 head (baseline)", tp_params=_QWEN3_LM_LAYERS,
                              other_params=2_877_083_666 - _QWEN3_LM_LAYERS, trainable_params=749_551_634,
                              layers=28, hidden=2048, heads=16, seq=205),
    # LWM-7B (LAPA's backbone, LLaMA-2-7B shape): 32 x 4096, 32 heads, MLP 11008, untied 32,000-row
    # embeddings, fully finetuned; 256 image tokens + instruction + latent queries per sample.
    "lwm-7b": ModelShape("LWM-7B full finetune (LAPA)", tp_params=_LLAMA2_7B_LAYERS,
                         other_params=2 * 32_000 * 4096 + 65 * 4096,
                         trainable_params=_LLAMA2_7B_LAYERS + 2 * 32_000 * 4096 + 65 * 4096,
                         layers=32, hidden=4096, heads=32, seq=320),
}


def shape_of_model(model: object, name: str, seq: int) -> ModelShape:
    """The planner's view of a built recipe module (``torch.device('meta')`` is enough): the
    parameters ``tensor_parallel.parallelize`` would shard (text-stack layers, DiT attention and
    MLP), the rest, the trainable ones, and the largest text stack's depth and width (or the DiT's
    when there is no text stack). ``seq``: tokens per sample."""
    from torch import nn

    from lavla.model.flow_head import DiT
    from lavla.model.layers import Mlp, MultiHeadAttention
    from lavla.trainer.tensor_parallel.parallelize import _is_hf_text_stack

    assert isinstance(model, nn.Module)
    sharded: dict[int, nn.Parameter] = {}
    stacks = [m for m in model.modules() if _is_hf_text_stack(m)]
    for stack in stacks:
        sharded.update({id(p): p for p in stack.layers.parameters()})
    dits = [m for m in model.modules() if isinstance(m, DiT)]
    for dit in dits:
        for m in dit.modules():
            if isinstance(m, (MultiHeadAttention, Mlp)):
                sharded.update({id(p): p for p in m.parameters()})
    params = {id(p): p for p in model.parameters()}
    tp_params = sum(p.numel() for p in sharded.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    if stacks:
        cfg = max(stacks, key=lambda m: m.config.num_hidden_layers).config
        layers, hidden, heads = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads
    elif dits:
        dit = dits[0]
        attn = next(m for m in dit.modules() if isinstance(m, MultiHeadAttention))
        layers, hidden, heads = len(dit.blocks), attn.q.in_features, attn.heads
    else:
        raise ValueError(f"{type(model).__name__} has nothing tensor parallelism shards (no Qwen3 text stack, no DiT)")
    return ModelShape(name, tp_params=float(tp_params), other_params=float(sum(p.numel() for p in params.values()) - tp_params),
                      trainable_params=float(trainable), layers=layers, hidden=hidden, heads=heads, seq=seq)


@dataclass(frozen=True)
class Layout:
    tp: int
    dp: int
    zero: int
    sequence_parallel: bool
    recompute: bool


@dataclass(frozen=True)
class Estimate:
    layout: Layout
    model_states_gib: float
    activations_gib: float
    comm_gib_per_step: float
    """Bytes each GPU sends per optimizer step (DP collectives + TP all-reduces), in GiB."""

    @property
    def total_gib(self) -> float:
        return self.model_states_gib + self.activations_gib


def model_state_bytes(shape: ModelShape, tp: int, dp: int, zero: int) -> float:
    """Weights, gradients and optimizer state held by one GPU."""
    per_gpu = shape.tp_params / tp + shape.other_params
    trainable = shape.trainable_params * per_gpu / shape.params  # adapters shard with the layers they adapt
    weights, grads, optim = 2.0 * per_gpu, 2.0 * trainable, 12.0 * trainable
    if zero >= 1:
        optim /= dp
    if zero >= 2:
        grads /= dp
    if zero >= 3:
        weights /= dp
    return weights + grads + optim


def activation_bytes(shape: ModelShape, micro_batch: int, tp: int, sequence_parallel: bool, recompute: bool) -> float:
    """Activations kept for the backward pass by one GPU, all layers, one micro batch."""
    s, b, h, a = shape.seq, micro_batch, shape.hidden, shape.heads
    if recompute:
        per_layer = 2.0 * s * b * h
    elif tp == 1:
        per_layer = s * b * h * (34.0 + 5.0 * a * s / h)
    elif sequence_parallel:
        per_layer = s * b * h * (34.0 / tp + 5.0 * a * s / (h * tp))
    else:
        per_layer = s * b * h * (10.0 + 24.0 / tp + 5.0 * a * s / (h * tp))
    return per_layer * shape.layers


def comm_bytes(shape: ModelShape, tp: int, dp: int, zero: int, micro_batch: int, grad_accum: int) -> float:
    """Bytes one GPU sends per optimizer step. Ring collectives over n ranks: an all-reduce of B bytes
    sends 2(n-1)/n B, a reduce-scatter or an all-gather (n-1)/n B."""
    share = (shape.tp_params / tp + shape.other_params) / shape.params  # of the model on this TP rank
    grads = 2.0 * shape.trainable_params * share  # bf16 gradients
    weights = 2.0 * shape.params * share  # bf16 weights, frozen ones included
    r = (dp - 1) / dp
    if zero >= 3:  # gradients reduce-scattered; weights all-gathered for every forward and backward
        dp_bytes = r * grads + 2.0 * r * weights * grad_accum
    else:  # gradients all-reduced (ZeRO-1/2 reduce-scatter, then all-gather the updated share: the same)
        dp_bytes = 2.0 * r * grads
    tp_bytes = 0.0
    if tp > 1:  # two all-reduces forward and two backward per layer (reduce-scatter + all-gather with SP)
        activation = 2.0 * shape.seq * micro_batch * shape.hidden
        tp_bytes = 4 * shape.layers * 2.0 * (tp - 1) / tp * activation * grad_accum
    return dp_bytes + tp_bytes


def estimate(shape: ModelShape, layout: Layout, micro_batch: int, grad_accum: int = 1) -> Estimate:
    return Estimate(layout,
                    model_state_bytes(shape, layout.tp, layout.dp, layout.zero) / GIB,
                    activation_bytes(shape, micro_batch, layout.tp, layout.sequence_parallel, layout.recompute) / GIB,
                    comm_bytes(shape, layout.tp, layout.dp, layout.zero, micro_batch, grad_accum) / GIB)


def layouts(gpus: int, gpus_per_node: int) -> list[Layout]:
    """Every TP (a power of two within one node, dividing the GPU count) x ZeRO stage, with and
    without full recomputation; sequence parallelism whenever TP > 1."""
    out = []
    for tp in (t for t in (1, 2, 4, 8) if t <= gpus_per_node and gpus % t == 0):
        for zero in (1, 2, 3):  # the trainer runs ZeRO 1-3 (stage 0 has no overflow check for the step skip)
            for recompute in (False, True):
                out.append(Layout(tp, gpus // tp, zero, tp > 1, recompute))
    return out


def recommend(shape: ModelShape, gpus: int, gpu_gib: float, micro_batch: int, gpus_per_node: int = 8,
              headroom: float = 0.85) -> tuple[Estimate | None, list[Estimate]]:
    """Among the layouts that fit ``headroom`` of the GPU: no recomputation if possible (it costs about a
    third more compute), then the smallest TP (its all-reduces sit on the critical path of every layer
    and shrink the matmuls, while DP traffic overlaps the backward pass), then the lowest ZeRO stage
    (ZeRO-3 gathers the weights again every micro step). None when nothing fits. Returns the choice
    and every estimate."""
    all_estimates = [estimate(shape, lay, micro_batch) for lay in layouts(gpus, gpus_per_node)]
    fits = [e for e in all_estimates if e.total_gib <= headroom * gpu_gib]
    if not fits:
        return None, all_estimates
    best = min(fits, key=lambda e: (e.layout.recompute, e.layout.tp, e.layout.zero))
    return best, all_estimates


def explain(shape: ModelShape, best: Estimate | None, gpus: int, gpu_gib: float) -> str:
    if best is None:
        return (f"no layout of {gpus} GPU(s) fits {gpu_gib:g} GiB per GPU, ZeRO-3 and full recomputation included: "
                "add GPUs or lower the micro batch")
    lay = best.layout
    why = []
    if lay.tp == 1:
        why.append("TP 1: the model fits with ZeRO alone, so TP's per-layer all-reduces would only add traffic")
    else:
        why.append(f"TP {lay.tp}: at a smaller TP the states and activations do not fit without recomputation "
                   "(TP stays inside a node)")
    why.append(f"ZeRO-{lay.zero}: the lowest stage that fits" if lay.zero else "no ZeRO partitioning needed")
    if lay.recompute:
        why.append("full recomputation: activations do not fit otherwise")
    return "; ".join(why)


def report(shape: ModelShape, gpus: int, gpu_gib: float, micro_batch: int, gpus_per_node: int = 8) -> str:
    best, all_estimates = recommend(shape, gpus, gpu_gib, micro_batch, gpus_per_node)
    lines = [f"{shape.name}: {shape.params / 1e9:.2f} B parameters ({shape.trainable_params / 1e9:.2f} B trainable), "
             f"{gpus} GPUs of {gpu_gib:g} GiB, micro batch {micro_batch}",
             f"{'TP':>3} {'DP':>4} {'ZeRO':>4} {'recompute':>9} {'states GiB':>10} {'activ. GiB':>10} "
             f"{'total GiB':>9} {'comm GiB/step':>13} fits"]
    for e in all_estimates:
        lay = e.layout
        lines.append(f"{lay.tp:>3} {lay.dp:>4} {lay.zero:>4} {'yes' if lay.recompute else 'no':>9} "
                     f"{e.model_states_gib:>10.1f} {e.activations_gib:>10.2f} {e.total_gib:>9.1f} "
                     f"{e.comm_gib_per_step:>13.2f} {'yes' if e.total_gib <= 0.85 * gpu_gib else 'no'}")
    if best is not None:
        lay = best.layout
        lines.append(f"recommended: TP {lay.tp} x DP {lay.dp}, ZeRO-{lay.zero}"
                     f"{', sequence parallel' if lay.sequence_parallel else ''}{', full recompute' if lay.recompute else ''}"
                     f" ({best.total_gib:.1f} GiB per GPU, {best.comm_gib_per_step:.2f} GiB sent per step)")
    lines.append("why: " + explain(shape, best, gpus, gpu_gib))
    if best is not None:
        lay = best.layout
        flags = [f"--trainer.zero.stage={lay.zero}"]
        if lay.tp > 1:
            flags += [f"--parallel.tensor_parallel_size={lay.tp}", "--parallel.sequence_parallel=true"]
        if lay.recompute:
            flags.append("--trainer.activation_checkpointing=true")
        lines.append(f"run with: {' '.join(flags)}   (--trainer.micro_batch_size={micro_batch})")
    return "\n".join(lines)
