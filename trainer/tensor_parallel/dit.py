"""The DiT action head's attention and MLP on megatron-core's column/row-parallel linears.

:func:`parallelize_dit` swaps every :class:`~lavla.model.layers.MultiHeadAttention` and
:class:`~lavla.model.layers.Mlp` inside a DiT for :class:`TPMultiHeadAttention` / :class:`TPMlp`,
loaded with this TP rank's exact shard of the module's current weights (Megatron's layout):

* ``q`` (column parallel): rows of heads block ``r``; ``kv`` (column parallel): ``[K rows of heads
  block r; V rows of heads block r]``, so the local output splits into local K and V halves just as
  the full one does; ``out`` (row parallel): the columns of heads block ``r``, full bias;
* ``fc1`` (column parallel): rows chunk ``r`` and bias chunk ``r``; ``fc2`` (row parallel): columns
  chunk ``r``, full bias.

Attribute names stay ``q, kv, out, fc1, fc2``, so a TP rank's ``state_dict`` has the TP=1 keys (plus
megatron's empty ``_extra_state``) and :func:`consolidate_dit_state` is a concatenation per key kind.
Each block does one all-reduce per attention and one per MLP in forward, and one each in backward.

Dropout. Under TP the default RNG stream must be identical on the ranks of a TP group (the flow
head's noise and time samples need that anyway: every TP rank must see the same DiT input).
Dropout on replicated activations (the MLP's output) draws from it, so all TP ranks drop the same
entries. Dropout on sharded activations (attention probabilities of the local heads, the MLP's
hidden shard) must differ per rank: it runs on a stream seeded from one draw of the default stream
plus the TP rank. That is megatron's split (default vs. model-parallel stream) without megatron's
RNG tracker, whose states torch's activation checkpointing (``trainer/activation_checkpointing``)
does not restore: with the tracker, a recomputed block would drop different entries than its
forward did. Here every mask is a function of the default stream, which checkpointing restores.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lavla.model.attention import attention
from lavla.model.layers import Mlp, MultiHeadAttention


def _check_divides(tp_size: int, count: int, what: str) -> None:
    if tp_size < 1 or count % tp_size:
        raise ValueError(f"tensor parallel size {tp_size} must divide the DiT's {count} {what}")


def _megatron_config(tp_rank: int, tp_size: int, dtype: torch.dtype) -> Any:
    """megatron's config for the parallel linears, after checking that its TP group is the one asked for."""
    from megatron.core import ModelParallelConfig
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        raise RuntimeError("the DiT's parallel linears need megatron's groups: call mpu.initialize first")
    group = (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size())
    if group != (tp_rank, tp_size):
        raise RuntimeError(f"asked for TP rank {tp_rank} of {tp_size}, megatron's group is rank {group[0]} of {group[1]}")
    return ModelParallelConfig(tensor_model_parallel_size=tp_size, sequence_parallel=False, use_cpu_initialization=True,
                               perform_initialization=False, params_dtype=dtype, gradient_accumulation_fusion=False)


def _no_init(_: Tensor) -> None:
    pass  # every weight is copied from the TP=1 module


def _load(linear: nn.Module, src: nn.Linear, weight: Tensor, bias: Tensor, partition_dim: int) -> nn.Module:
    """Copy the shard into ``linear`` and give it ``src``'s device and trainability."""
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    # megatron marks a weight as a TP shard only when it initializes it (perform_initialization);
    # DeepSpeed's gradient norm counts an unmarked parameter on TP rank 0 only.
    set_tensor_model_parallel_attributes(linear.weight, True, partition_dim, 1)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    linear.to(src.weight.device)
    linear.weight.requires_grad_(src.weight.requires_grad)
    linear.bias.requires_grad_(src.bias.requires_grad)
    return linear


def _column(src: nn.Linear, weight: Tensor, bias: Tensor, config: Any) -> nn.Module:
    from megatron.core.tensor_parallel import ColumnParallelLinear

    layer = ColumnParallelLinear(src.in_features, src.out_features, config=config, init_method=_no_init, bias=True,
                                 gather_output=False, skip_bias_add=False)
    return _load(layer, src, weight, bias, partition_dim=0)


def _row(src: nn.Linear, tp_rank: int, tp_size: int, config: Any) -> nn.Module:
    from megatron.core.tensor_parallel import RowParallelLinear

    layer = RowParallelLinear(src.in_features, src.out_features, config=config, init_method=_no_init, bias=True,
                              input_is_parallel=True, skip_bias_add=False)
    return _load(layer, src, src.weight.detach().chunk(tp_size, dim=1)[tp_rank], src.bias.detach(), partition_dim=1)


def _rows(t: Tensor, tp_rank: int, tp_size: int) -> Tensor:
    return t.detach().chunk(tp_size, dim=0)[tp_rank]


@contextlib.contextmanager
def _rank_stream(active: bool, device: torch.device, tp_rank: int) -> Iterator[None]:
    """Run the body on an RNG stream of its own for this TP rank, seeded from one draw of the default
    (TP-shared) CPU stream: the ranks' streams differ, and a recompute replays the same ones."""
    if not active:
        yield
        return
    seed = int(torch.randint(0, 2**62, ())) + 1_000_003 * tp_rank
    if device.type == "cuda":
        with torch.random.fork_rng(devices=[device]), torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield


class TPMultiHeadAttention(nn.Module):
    """:class:`MultiHeadAttention` running ``heads / tp`` local heads (same call, same result)."""

    def __init__(self, src: MultiHeadAttention, tp_rank: int, tp_size: int) -> None:
        super().__init__()
        _check_divides(tp_size, src.heads, "attention heads")
        config = _megatron_config(tp_rank, tp_size, src.q.weight.dtype)
        self.heads = src.heads
        self.local_heads = src.heads // tp_size
        self.dropout = src.dropout
        self.tp_rank = tp_rank
        self.q = _column(src.q, _rows(src.q.weight, tp_rank, tp_size), _rows(src.q.bias, tp_rank, tp_size), config)
        k_w, v_w = src.kv.weight.detach().chunk(2, dim=0)
        k_b, v_b = src.kv.bias.detach().chunk(2, dim=0)
        kv_w = torch.cat([_rows(k_w, tp_rank, tp_size), _rows(v_w, tp_rank, tp_size)])
        kv_b = torch.cat([_rows(k_b, tp_rank, tp_size), _rows(v_b, tp_rank, tp_size)])
        self.kv = _column(src.kv, kv_w, kv_b, config)
        self.out = _row(src.out, tp_rank, tp_size, config)
        self.train(src.training)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        b, t, _ = x.shape
        h = self.local_heads
        ctx = x if context is None else context
        q = self.q(x)[0].view(b, t, h, -1).transpose(1, 2)
        k, v = self.kv(ctx)[0].view(b, ctx.shape[1], 2, h, -1).permute(2, 0, 3, 1, 4)
        if mask is not None and mask.dim() == 4 and mask.shape[1] == self.heads and h != self.heads:
            mask = mask[:, self.tp_rank * h:(self.tp_rank + 1) * h]  # a per-head mask: this rank's heads
        p = self.dropout if self.training else 0.0
        with _rank_stream(p > 0, x.device, self.tp_rank):
            o = attention(q, k, v, mask=mask, causal=causal, dropout_p=p)
        return self.out(o.transpose(1, 2).reshape(b, t, h * o.shape[-1]))[0]


class TPMlp(nn.Module):
    """:class:`Mlp` with its hidden layer split over TP (same call, same result)."""

    def __init__(self, src: Mlp, tp_rank: int, tp_size: int) -> None:
        super().__init__()
        _check_divides(tp_size, src.fc1.out_features, "MLP hidden units")
        config = _megatron_config(tp_rank, tp_size, src.fc1.weight.dtype)
        self.dropout = src.drop.p
        self.tp_rank = tp_rank
        self.fc1 = _column(src.fc1, _rows(src.fc1.weight, tp_rank, tp_size), _rows(src.fc1.bias, tp_rank, tp_size),
                           config)
        self.fc2 = _row(src.fc2, tp_rank, tp_size, config)
        self.train(src.training)

    def forward(self, x: Tensor) -> Tensor:
        p = self.dropout if self.training else 0.0
        hidden = F.gelu(self.fc1(x)[0])
        if p > 0:
            with _rank_stream(True, x.device, self.tp_rank):
                hidden = F.dropout(hidden, p, True)
        return F.dropout(self.fc2(hidden)[0], p, self.training)  # replicated: the shared default stream


def parallelize_dit(dit: nn.Module, tp_rank: int, tp_size: int) -> int:
    """Replace, in place, every :class:`MultiHeadAttention` and :class:`Mlp` inside ``dit`` by its TP
    form holding rank ``tp_rank``'s shard of the current weights; returns how many were replaced.
    megatron's groups must exist (``mpu.initialize``) and match ``tp_rank``/``tp_size``.

    Everything else (norms, AdaLayerNorm projections, the time embedding, ``proj_out``) stays
    replicated, and its gradients are complete on every TP rank without any extra sum: activations
    between the parallel regions are replicated, and each column-parallel linear's input gradient (the
    partial sum over the rank's heads / hidden units) is all-reduced over the TP group in backward
    (megatron's ``copy_to_tensor_model_parallel_region``, or the same all-reduce fused into its linear
    autograd function); the row-parallel output is all-reduced in forward, so its bias and everything
    after it see the full activation. So the replicated weights before, between and after the
    parallel regions (the cross-attention context included) get the TP=1 gradient on every rank.

    No sequence parallelism: the DiT's sequence is a state token plus an action chunk (~16 tokens),
    and the VL context enters only as cross-attention keys/values; sharding so short a sequence
    would save almost no activation memory and would add an all-gather and a reduce-scatter per
    region instead of one all-reduce.

    Checks every module first: a TP size that does not divide the heads or MLP hidden width, or a
    module under an attribute name :func:`consolidate_dit_state` would not recognize, raises
    ValueError and leaves ``dit`` unchanged.
    """
    targets = [(name, m) for name, m in dit.named_modules() if isinstance(m, (MultiHeadAttention, Mlp))]
    for name, m in targets:
        attr = name.rpartition(".")[2]
        if attr not in (("self_attn", "cross_attn") if isinstance(m, MultiHeadAttention) else ("mlp",)):
            raise ValueError(f"{name}: consolidate_dit_state recognizes shards by TransformerBlock's attribute "
                             "names (self_attn, cross_attn, mlp) only")
        if isinstance(m, MultiHeadAttention):
            _check_divides(tp_size, m.heads, "attention heads")
        else:
            _check_divides(tp_size, m.fc1.out_features, "MLP hidden units")
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = dit.get_submodule(parent_name) if parent_name else dit
        tp = TPMultiHeadAttention(m, tp_rank, tp_size) if isinstance(m, MultiHeadAttention) else TPMlp(m, tp_rank, tp_size)
        setattr(parent, attr, tp)
    return len(targets)


_COLUMN = re.compile(r"(^|\.)((self_attn|cross_attn)\.q|mlp\.fc1)\.(weight|bias)$")
_KV = re.compile(r"(^|\.)(self_attn|cross_attn)\.kv\.(weight|bias)$")
_ROW_WEIGHT = re.compile(r"(^|\.)((self_attn|cross_attn)\.out|mlp\.fc2)\.weight$")


def consolidate_dit_state(shards: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The TP=1 DiT state dict (keys and layout of the unparallelized module) from every TP rank's DiT
    ``state_dict()`` after :func:`parallelize_dit`, in TP rank order: the inverse of the sharding.
    megatron's ``_extra_state`` entries are dropped; replicated tensors come from rank 0. Sharded keys
    are recognized by TransformerBlock's names (``self_attn.q``, ``cross_attn.kv``, ``mlp.fc2``, ...),
    so a prefix (``dit.``) is fine."""
    if not shards:
        raise ValueError("no shards to consolidate")
    keys = [k for k in shards[0] if not k.endswith("_extra_state")]
    for r, shard in enumerate(shards[1:], 1):
        if {k for k in shard if not k.endswith("_extra_state")} != set(keys):
            raise ValueError(f"TP rank {r}'s DiT state dict has other keys than rank 0's")
    out: dict[str, Tensor] = {}
    for key in keys:
        parts = [s[key] for s in shards]
        if _COLUMN.search(key):
            out[key] = torch.cat(parts, dim=0)
        elif _KV.search(key):  # each rank holds [K_r; V_r]
            halves = [p.chunk(2, dim=0) for p in parts]
            out[key] = torch.cat([k for k, _ in halves] + [v for _, v in halves], dim=0)
        elif _ROW_WEIGHT.search(key):
            out[key] = torch.cat(parts, dim=1)
        else:
            out[key] = parts[0].clone()
    return out


def shard_dit_state(state: dict[str, Tensor], tp_rank: int, tp_size: int) -> dict[str, Tensor]:
    """TP rank ``tp_rank``'s DiT state from the TP=1 one (keys may carry a prefix): the exact
    inverse of :func:`consolidate_dit_state`, for weights and for optimizer moments alike."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _COLUMN.search(key):
            out[key] = value.chunk(tp_size, dim=0)[tp_rank].clone()
        elif _KV.search(key):  # [K; V] -> [K_r; V_r]
            k, v = value.chunk(2, dim=0)
            out[key] = torch.cat([k.chunk(tp_size, dim=0)[tp_rank], v.chunk(tp_size, dim=0)[tp_rank]], dim=0)
        elif _ROW_WEIGHT.search(key):
            out[key] = value.chunk(tp_size, dim=1)[tp_rank].clone()
        else:
            out[key] = value
    return out
