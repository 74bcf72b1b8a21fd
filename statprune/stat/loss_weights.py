"""``error_norm=loss``: weight each layer's output error by the loss's sensitivity to that output.

STAT's curves measure the error of a sub-block's output y = C W_outᵀ + b (C: a layer's head outputs,
W_out = W_O; or its neurons, W_out = W_down; tokens × dims) when units are removed and the rest
corrected, y − ŷ = (C − Ĉ) W_outᵀ. Under ``residual`` every layer's error is divided by its input
energy, which is not the network's loss. Here, as in Kwon et al. and LLM-Surgeon, the loss increase
is taken to second order with the diagonal empirical Fisher of the sub-block output:
ΔL ∝ Σ_t Σ_d g[d] (y − ŷ)_td², g[d] = E_t[(∂L/∂y_td)²] (mean over real calibration tokens).

Derivation of the weighted curves. With E = (C − Ĉ) W_outᵀ,
    Σ_d g[d] ‖E[:, d]‖² = ‖E diag(√g)‖_F² = ‖(C − Ĉ) W_gᵀ‖_F² = tr(W_g S W_gᵀ),
    W_g = diag(√g) W_out  (W_out's rows, the output dims, scaled by √g),
    S = (C − Ĉ)ᵀ(C − Ĉ), the Schur complement of the Gram G = CᵀC on the kept units.
S depends on G only, so every curve is today's Gram computation with W_out replaced by W_g
(:func:`statprune.stat.heads.head_curve`, :func:`statprune.stat.neurons.neuron_curve`). Selection
and correction stay as they are: the correction Ĉ = C_K T fits each column of C on the kept columns
separately, so C_K T W_gᵀ is the least-squares fit of C W_gᵀ for every W_g — the same T is optimal
under the weighted error too. The FFN pivots ``share`` reads, |R_jj| of Z D (D = W_down's column
norms, pivoted QR order p), become those of Z D_g (D_g = W_g's column norms) in the same order:
scaling the columns of Z D by D_g/D scales the columns of R, so |R_jj| ↦ |R_jj|·D_g[p_j]/D[p_j].
No per-layer division follows (g carries the layer's importance in loss units); g = c·1 gives c
times the ``none`` curves, hence ``none``'s allocation.

The loss is the calibration data's task loss (:func:`statprune.baselines.kwon.fisher.task_loss`:
next-token loss for causal LMs; an encoder's head loss from labels, refused without them), summed
over its terms so that ∂L/∂y_t is each token's own gradient whatever the batching. Gradients reach
the sub-block outputs through forward hooks on the adapter's ``out_proj``/``down_proj``; model
weights get no gradients and g is accumulated per micro-batch of ≤ ``max_tokens`` tokens, so memory
is one micro-batch's forward/backward (no activations are kept across micro-batches).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.baselines.kwon.fisher import loss_terms, task_loss
from statprune.calibration import Calibration
from statprune.errors import StatpruneError

Weights = dict[tuple[int, str], torch.Tensor]  # (layer, "heads" | "neurons") → g over hidden dims


def _pieces(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    rows, seq = batch["input_ids"].shape
    per = max(1, max_tokens // max(seq, 1))
    return [{k: v[s : s + per] for k, v in batch.items()} for s in range(0, rows, per)]


def output_grad_weights(
    model: nn.Module,
    adapter: Adapter,
    calib: Calibration,
    device: torch.device,
    *,
    max_tokens: int = 4096,
    progress: bool = True,
) -> Weights:
    """g[(l, kind)][d] = E over real calibration tokens of (∂L/∂y_l[d])², float64 on the CPU; y_l is
    the output of layer l's ``out_proj`` (kind ``heads``) or ``down_proj`` (``neurons``)."""
    points = {adapter.out_proj(i): (i, "heads") for i in range(adapter.num_layers)}
    points.update({adapter.down_proj(i): (i, "neurons") for i in range(adapter.num_layers)})
    outs: dict[tuple[int, str], torch.Tensor] = {}

    def capture(mod: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not out.requires_grad:  # the first hooked output: nothing upstream needs a gradient
            out = out.detach().requires_grad_(True)
        outs[points[mod]] = out
        return out

    acc = {
        key: torch.zeros(mod.weight.shape[0], dtype=torch.float64, device=device)
        for mod, key in points.items()
    }
    n_tokens = 0
    flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = [mod.register_forward_hook(capture) for mod in points]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            for batch in tqdm(calib.batches, desc="stat: loss gradients", disable=not progress):
                for piece in _pieces(batch, max_tokens):
                    outs.clear()
                    terms = loss_terms(model, piece)
                    if terms == 0:
                        continue
                    loss = task_loss(model, piece, device, method="stat error_norm=loss") * terms
                    if not torch.isfinite(loss):
                        raise StatpruneError("stat error_norm=loss: the calibration loss is NaN/inf")
                    keys = list(outs)
                    grads = torch.autograd.grad(loss, [outs[k] for k in keys], allow_unused=True)
                    mask = piece["attention_mask"].to(device).bool()
                    for key, g in zip(keys, grads):
                        if g is not None:  # a family that flattens tokens (OPT's FFN): unflatten
                            g = g.reshape(*mask.shape, g.shape[-1])
                            acc[key] += g[mask].double().pow(2).sum(0)
                    n_tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        outs.clear()
    if n_tokens == 0:
        raise StatpruneError("stat error_norm=loss: the calibration data has no loss terms")
    return {key: (v / n_tokens).cpu() for key, v in acc.items()}
