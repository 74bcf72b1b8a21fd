"""SliceGPT steps 2–4: per-block PCA rotations on already-sliced signals, then physical slicing.

Every residual-stream basis is the eigenbasis (descending) of the covariance XᵀX of the signal there,
computed on calibration data that has passed through the model rotated and sliced so far (SliceGPT's
sequential variant). Bases: Q_0 for the embedding output / layer-0 input; per layer, Q_m for the
residual after attention (FFN input) and Q_{i+1} for the layer output, which is the next layer's
input basis and, after the last layer, the LM head's.

While the walk runs the model keeps its full width d but every residual signal is *zero-padded*:
coordinates ≥ k are exactly zero (the rotations write zero rows/columns there). The stock RMSNorm
then averages over d, exactly SliceGPT's RMSNorm with the original dimension, so the padded model
computes what the sliced one will. Signals are measured in the original (unrotated) basis by giving
a block a temporary output basis of identity and its shortcut Q_inᵀ; once the block's output basis
is known, its output linear and shortcut are rotated. Finally :func:`slice_model` drops the zero
coordinates; the RMSNorm mean is then over k, so √(d/k) is folded into the norms' readers (the norm
ε acts as ε·k/d afterwards, a negligible change).

``slice_head=False`` (the official default, ``do_slice_head=False``): the last layer's output basis
is kept whole — its down projection writes all d coordinates, its FFN shortcut is k × d, and the
final norm and LM head stay d wide (no √(d/k) fold there). Everything else is sliced to k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.baselines.slicegpt.shortcuts import get_shortcut, set_shortcut
from statprune.calibration import Calibration, Gram, LayerWalk


class _Stop(Exception):
    pass


@dataclass
class RotationReport:
    """Fraction of signal energy (eigenvalue mass, before damping) kept by the top-k directions."""

    energy_kept: list[float] = field(default_factory=list)


def pca_basis(
    G: torch.Tensor, damping: float, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors (columns, eigenvalues descending) of G + damping·mean(diag G)·I, and the eigenvalues."""
    G = G.to(dtype)
    G = 0.5 * (G + G.T)
    G = G + damping * torch.diagonal(G).mean() * torch.eye(G.shape[0], dtype=dtype, device=G.device)
    w, V = torch.linalg.eigh(G)
    return V.flip(1).double(), w.flip(0).double()


def _energy(G: torch.Tensor, Q: torch.Tensor, k: int) -> float:
    G = G.double()
    total = float(torch.diagonal(G).sum())
    top = float(((Q[:, :k].T @ G) * Q[:, :k].T).sum())
    return top / total if total > 0 else 1.0


def _pad(Q: torch.Tensor, k: int) -> torch.Tensor:
    """Q with columns ≥ k zeroed (rotate, then keep the first k coordinates)."""
    out = Q.clone()
    out[:, k:] = 0.0
    return out


@torch.no_grad()
def _set_weight(lin: nn.Linear, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
    lin.weight.copy_(W.to(lin.weight.dtype))
    if b is not None and lin.bias is not None:
        lin.bias.copy_(b.to(lin.bias.dtype))


@torch.no_grad()
def _rotate_inputs(linears: list[nn.Linear], Q: torch.Tensor) -> None:
    for lin in linears:
        _set_weight(lin, lin.weight.double() @ Q.to(lin.weight.device))


@torch.no_grad()
def _rotate_outputs(lin: nn.Linear, Qp: torch.Tensor) -> None:
    """Output y ↦ y·Qp: W ← Qpᵀ W, b ← b Qp."""
    Qp = Qp.to(lin.weight.device)
    b = lin.bias.double() @ Qp if lin.bias is not None else None
    _set_weight(lin, Qp.T @ lin.weight.double(), b)


def _run(
    adapter: Adapter,
    walk: LayerWalk,
    i: int,
    hooks: dict[nn.Module, object] | None = None,
    stop: bool = False,
) -> list[torch.Tensor]:
    """Run layer ``i`` on every batch; ``hooks[module](x, mask)`` sees module inputs (then stop if asked)."""
    layer = adapter.layers()[i]
    handles, current = [], {}
    for mod, fn in (hooks or {}).items():

        def pre(_m, args, fn=fn):
            fn(args[0], current["mask"])
            if stop:
                raise _Stop

        handles.append(mod.register_forward_pre_hook(pre))
    outs = []
    try:
        for b, h in enumerate(walk.hidden):
            current["mask"] = walk.masks[b]
            try:
                res = layer(h.to(adapter.dtype), *walk.args[b], **walk.kwargs[b])
            except _Stop:
                continue
            outs.append((res[0] if isinstance(res, (tuple, list)) else res).detach())
    finally:
        for hd in handles:
            hd.remove()
    return outs


@torch.no_grad()
def rotate_and_slice_padded(
    adapter: Adapter,
    calib: Calibration,
    k: int,
    *,
    damping: float,
    pca_dtype: torch.dtype = torch.float64,
    progress: bool = True,
    slice_head: bool = False,
) -> RotationReport:
    """Rotate a fused model and zero every residual coordinate ≥ k (the width stays d); with
    ``slice_head=False`` the last layer's output is not zeroed."""
    d = adapter.hidden_size
    report = RotationReport()
    walk = LayerWalk(adapter, calib)
    dev = walk.device

    def gram_of(hidden: list[torch.Tensor]) -> torch.Tensor:
        g = Gram(d, dev, pca_dtype)
        for h, m in zip(hidden, walk.masks):
            g(h, m)
        return g.G

    G = gram_of(walk.hidden)
    Q_prev, _ = pca_basis(G, damping, pca_dtype)
    Q_prev = Q_prev.to(dev)
    report.energy_kept.append(_energy(G, Q_prev, k))
    emb = adapter.embeddings()
    emb.weight.copy_((emb.weight.double() @ _pad(Q_prev, k).to(emb.weight.device)).to(emb.weight.dtype))
    walk.capture()
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    for i in tqdm(range(adapter.num_layers), desc="slicegpt: rotate", disable=not progress):
        # attention: inputs in the padded Q_prev basis; measure the residual after it in the original basis
        _rotate_inputs(list(adapter.qkv(i)), Q_prev)
        set_shortcut(adapter, i, "attention", Q_prev.T)
        set_shortcut(adapter, i, "ffn", eye)
        g = Gram(d, dev, pca_dtype)
        _run(adapter, walk, i, {adapter.post_attention_norm(i): g}, stop=True)
        Q_mid, _ = pca_basis(g.G, damping, pca_dtype)
        Q_mid = Q_mid.to(dev)
        report.energy_kept.append(_energy(g.G, Q_mid, k))
        _rotate_outputs(adapter.out_proj(i), _pad(Q_mid, k))
        set_shortcut(adapter, i, "attention", Q_prev.T @ _pad(Q_mid, k))
        # FFN: inputs in the padded Q_mid basis; measure the layer output in the original basis
        _rotate_inputs(adapter.ffn_in(i), Q_mid)
        set_shortcut(adapter, i, "ffn", Q_mid.T)
        outs = _run(adapter, walk, i)
        G = gram_of(outs)
        Q_next, _ = pca_basis(G, damping, pca_dtype)
        Q_next = Q_next.to(dev)
        last_full = not slice_head and i == adapter.num_layers - 1
        report.energy_kept.append(1.0 if last_full else _energy(G, Q_next, k))
        Qn = Q_next if last_full else _pad(Q_next, k)
        _rotate_outputs(adapter.down_proj(i), Qn)
        set_shortcut(adapter, i, "ffn", Q_mid.T @ Qn)
        # the outputs are linear in the final rotation: no need to run the layer again
        walk.advance([(o.double() @ Qn).to(o.dtype) for o in outs])
        Q_prev = Q_next
    _rotate_inputs([adapter.lm_head()], Q_prev)
    return report


@torch.no_grad()
def slice_model(adapter: Adapter, k: int, *, slice_head: bool = False) -> None:
    """Drop the zero coordinates ≥ k everywhere: the model's hidden size becomes k (with
    ``slice_head=False`` the last layer's output, the final norm and the LM head keep width d)."""
    d = adapter.hidden_size
    last = adapter.num_layers - 1
    c = math.sqrt(d / k)

    def cut_in(lin: nn.Linear, scale: float) -> None:
        lin.weight = nn.Parameter(
            lin.weight.detach()[:, :k].double().mul(scale).to(lin.weight.dtype).contiguous()
        )
        lin.in_features = k

    def cut_out(lin: nn.Linear) -> None:
        lin.weight = nn.Parameter(lin.weight.detach()[:k].contiguous())
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[:k].contiguous())
        lin.out_features = k

    def cut_norm(norm: nn.Module) -> None:
        norm.weight = nn.Parameter(torch.ones(k, dtype=norm.weight.dtype, device=norm.weight.device))

    emb = adapter.embeddings()
    emb.weight = nn.Parameter(emb.weight.detach()[:, :k].contiguous())
    emb.embedding_dim = k
    for i in range(adapter.num_layers):
        for lin in adapter.qkv(i):
            cut_in(lin, c)
        cut_out(adapter.out_proj(i))
        for lin in adapter.ffn_in(i):
            cut_in(lin, c)
        full_out = not slice_head and i == last
        if not full_out:
            cut_out(adapter.down_proj(i))
        for kind in ("attention", "ffn"):
            M = get_shortcut(adapter, i, kind).weight.detach().T
            set_shortcut(adapter, i, kind, M[:k, :] if kind == "ffn" and full_out else M[:k, :k])
        cut_norm(adapter.input_norm(i))
        cut_norm(adapter.post_attention_norm(i))
    if slice_head:
        cut_norm(adapter.final_norm())
        cut_in(adapter.lm_head(), c)
    cfg = adapter.config
    if getattr(cfg, "head_dim", None) is None:
        cfg.head_dim = adapter.head_dim
    cfg.hidden_size = k
