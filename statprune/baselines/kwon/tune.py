"""Least-squares mask tuning (Kwon et al. §4.3): kept mask values become real scales.

Layer by layer, bottom-up, the student (kept units, scales tuned so far) and the teacher (the dense
model, or a less-pruned "teacher assistant" mask) run on their own hidden states — the student's
inputs carry every earlier layer's pruning and tuning. Each sub-block's output is linear in its
scales: attention output = Σ_h m_h·(C_h W_O,hᵀ) + b_O, FFN output = Σ_j m_j·z_j w_jᵀ + b_2. The
scales are fitted so the student's residual stream after the sub-block, x_S + y_S(m), matches the
teacher's, x_T + y_T (for post-LN models that is the LayerNorm input; the LN itself is not linear).
With m = 1 + δ and r = (x_T + y_T) − (x_S + y_S(1)) the least-squares problem is min_δ ‖Aδ − r‖².
A is never formed: AᵀA and Aᵀr are streamed over tokens (head Gram ⊙ W_Oᵀ W_O block sums; neuron
Gram ⊙ W2ᵀW2; the Grams are STAT's :class:`~statprune.calibration.Gram`, so bf16 activations on a
GPU take its exact-product half-precision path).

Solvers (``solver``):

* ``"lsmr"`` (default) — what the released code runs (``prune/rescale.py``, ``utils/linalg.py``):
  LSMR is applied to the *normal equations* as if they were the data, ``lsmr(AᵀA, Aᵀr, damp=1)``
  with the defaults of the released solver, cupyx's LSMR (atol = btol = 1e-6, conlim = 1e8, at
  most 5·n iterations — scipy's default cap is n, which fails on most attention fits); a stop code
  ≥ 3 (ill-conditioned, iteration cap) is a failed solve. That minimises
  ‖AᵀA δ − Aᵀr‖² + ‖δ‖², i.e. δ → ((AᵀA)² + I)⁻¹ AᵀA Aᵀr: with AᵀA summed over thousands of tokens
  the damping is negligible and the fit is plain least squares, stopped early by the tolerances.
  The attention fit has, as released, one extra column of ones (a scalar offset on every output
  coordinate, starting at 1 like the scales), fitted with the heads and then dropped.
* ``"ridge"`` — the ridge toward 1 that the paper's text suggests, min ‖Aδ − r‖² + damp²‖δ‖², by a
  Cholesky solve of (AᵀA + damp²I) δ = Aᵀr, no offset column (the earlier default; for ablation).

A fit is abandoned if the solve fails or a scale leaves [−bound, bound]. ``on_failure="stop"`` (the
released code's ``break``) then ends tuning: this and every later sub-block keep 0/1 masks;
``"skip"`` keeps going with the next sub-block. For sequence classification the last layer's FFN is
fitted on the first token only (the released ``cls_only``), the only position the head reads.

Remaining differences from the released code: it does not tune layer 0's attention (we do; the fit
can only lower that sub-block's error); it accumulates AᵀA and runs LSMR in float32 on the GPU
(float64 here); its teacher masks are applied by ``head_mask`` (hooks here, same products).
Families that normalise a sub-block's output before the residual add (Gemma-2/3's post-attention
and post-FFN norms; the release has no such family) break the linearity above: the fit then matches
the un-normalised sub-block output, an approximation (tests check exact recovery only elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.baselines.kwon.masks import MaskHooks, Masks
from statprune.calibration import Calibration, Gram, LayerWalk


class _Stop(Exception):
    """Raised by a capture hook once everything needed from a layer run is recorded."""


@dataclass
class SubBlockFit:
    status: str  # "ok" | "solver_failed" | "out_of_range" | "nothing_kept"
    error_before: float
    error_after: float
    max_abs_scale: float = 1.0


@dataclass
class TuneReport:
    attention: list[SubBlockFit] = field(default_factory=list)
    ffn: list[SubBlockFit] = field(default_factory=list)
    stopped_at: str | None = None  # "layer.part" where on_failure="stop" ended tuning

    def to_dict(self) -> dict:
        return {
            "attention": [vars(f) for f in self.attention],
            "ffn": [vars(f) for f in self.ffn],
            "stopped_at": self.stopped_at,
        }


def lsmr_normal_equations(AtA: np.ndarray, rhs: np.ndarray, damp: float) -> tuple[np.ndarray, bool]:
    """The released solver: LSMR on (AᵀA, rhs) with ``damp`` and cupyx's defaults (scipy's, except
    at most 5·n iterations); ok if its stop code is < 3. A 1 × 1 system is divided directly, as
    released."""
    from scipy.sparse.linalg import lsmr

    if rhs.shape[0] == 1:
        return rhs / AtA[0, 0], bool(AtA[0, 0] != 0)
    out = lsmr(AtA, rhs, damp=damp, atol=1e-6, btol=1e-6, conlim=1e8, maxiter=5 * rhs.shape[0])
    return np.asarray(out[0], dtype=np.float64), int(out[1]) < 3


def solve_scales(
    AtA: torch.Tensor,
    Atr: torch.Tensor,
    rr: float,
    *,
    damp: float,
    bound: float,
    solver: str = "lsmr",
    intercept: bool = False,
) -> tuple[torch.Tensor | None, SubBlockFit]:
    """δ for the kept units from the normal statistics (see the module docstring); None if abandoned.

    ``intercept``: the last row/column of AᵀA and the last entry of Aᵀr belong to a column of ones
    (used by ``solver="lsmr"`` only, dropped from the result). ``rr`` = ‖r‖²; the reported errors
    are of the units' scales alone.
    """
    n = Atr.numel() - int(intercept)
    if n == 0:
        return None, SubBlockFit("nothing_kept", rr, rr)
    AtA = 0.5 * (AtA + AtA.T).double()
    Atr = Atr.double()
    if solver == "lsmr":
        # as released: x = 1 + δ for every column, the offset column included, so rhs = Aᵀ(r − A_ones·1)
        rhs = Atr - AtA[:, -1] if intercept else Atr
        x, ok = lsmr_normal_equations(AtA.cpu().numpy(), rhs.cpu().numpy(), damp)
        if not ok:
            return None, SubBlockFit("solver_failed", rr, rr)
        delta = torch.from_numpy(x[:n].copy()).to(AtA.device)
    elif solver == "ridge":
        AtA, Atr = AtA[:n, :n], Atr[:n]
        eye = torch.eye(n, dtype=AtA.dtype, device=AtA.device)
        L, info = torch.linalg.cholesky_ex(AtA + max(damp**2, 1e-12 * float(AtA.diagonal().max())) * eye)
        if int(info) != 0:
            return None, SubBlockFit("solver_failed", rr, rr)
        delta = torch.cholesky_solve(Atr[:, None], L)[:, 0]
    else:
        raise ValueError(f"unknown solver {solver!r}")
    if not bool(torch.isfinite(delta).all()):
        return None, SubBlockFit("solver_failed", rr, rr)
    A, b = AtA[:n, :n], Atr[:n]
    after = rr - 2.0 * float(delta @ b) + float(delta @ (A @ delta))
    big = float((1.0 + delta).abs().max())
    if big > bound:
        return None, SubBlockFit("out_of_range", rr, rr, big)
    return delta.cpu(), SubBlockFit("ok", rr, max(after, 0.0), big)


class _Runner:
    """Runs one layer on one batch with given masks and capture hooks (stopping early if asked)."""

    def __init__(self, adapter: Adapter, walk: LayerWalk, hooks: MaskHooks) -> None:
        self.adapter, self.walk, self.hooks = adapter, walk, hooks

    def __call__(
        self,
        i: int,
        b: int,
        hidden: torch.Tensor,
        masks: Masks | None,
        captures: dict,
        stop_at: torch.nn.Module | None = None,
    ) -> torch.Tensor | None:
        """``captures``: name → (module, "in"|"out"); returns the layer output unless stopped."""
        got: dict[str, torch.Tensor] = {}
        handles = []
        for name, (mod, side) in captures.items():

            def fwd(m, args, out, name=name, side=side):
                got[name] = args[0] if side == "in" else out
                if m is stop_at and all(k in got for k in captures):
                    raise _Stop

            handles.append(mod.register_forward_hook(fwd))
        self.hooks.active = masks
        layer = self.adapter.layers()[i]
        out = None
        try:
            res = layer(hidden.to(self.adapter.dtype), *self.walk.args[b], **self.walk.kwargs[b])
            out = res[0] if isinstance(res, (tuple, list)) else res
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        self.got = got
        return out


def _flat(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask].double()


def _cls_only(mask: torch.Tensor) -> torch.Tensor:
    """The first token of every sequence (the position a sequence-classification head reads)."""
    out = torch.zeros_like(mask)
    out[:, 0] = mask[:, 0]
    return out


def _with_intercept(AtA: torch.Tensor, Atr: torch.Tensor, ones_row: torch.Tensor, count: float, r_sum: float):
    """Border the statistics with a column of ones (the released attention fit's offset column)."""
    n = len(Atr)
    full = torch.zeros(n + 1, n + 1, dtype=AtA.dtype, device=AtA.device)
    full[:n, :n], full[:n, n], full[n, :n], full[n, n] = AtA, ones_row, ones_row, count
    return full, torch.cat([Atr, Atr.new_tensor([r_sum])])


@torch.no_grad()
def tune_masks(
    adapter: Adapter,
    calib: Calibration,
    student: Masks,
    teacher: Masks | None,
    *,
    damp: float = 1.0,
    bound: float = 10.0,
    solver: str = "lsmr",
    on_failure: str = "stop",
    cls_last_ffn: bool = False,
    progress: bool = True,
) -> tuple[Masks, TuneReport]:
    """Real-valued scales for the kept units of ``student`` (0/1 masks); pruned units stay 0.

    ``cls_last_ffn``: fit the last layer's FFN on the first token only (sequence classification)."""
    walk = LayerWalk(adapter, calib)
    t_hidden = list(walk.hidden)
    scales = student.clone()
    report = TuneReport()
    hooks = MaskHooks(adapter)
    run = _Runner(adapter, walk, hooks)
    hd = adapter.head_dim
    intercept = solver == "lsmr"
    L = adapter.num_layers

    def failed(fit: SubBlockFit) -> bool:
        return fit.status in ("solver_failed", "out_of_range") and on_failure == "stop"

    with hooks.attached():
        for i in tqdm(range(L), desc="kwon: tune", disable=not progress):
            o_proj, down = adapter.out_proj(i), adapter.down_proj(i)
            # --- attention -------------------------------------------------------------------
            kept = torch.nonzero(scales.head[i] != 0).flatten().cpu()
            W = o_proj.weight.detach().double()
            dims = (kept[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1).to(W.device)
            WK = W[:, dims]  # d × |K|·hd
            M = WK.T @ WK
            wsum = WK.sum(0)  # a head's contribution summed over output coordinates: c_h · wsum_h
            gram = Gram(len(dims), W.device)
            Atr = torch.zeros(len(kept), dtype=torch.float64, device=W.device)
            ones_row = torch.zeros(len(kept), dtype=torch.float64, device=W.device)
            rr = r_sum = count = 0.0
            caps = {"y": (o_proj, "out"), "c": (o_proj, "in")}
            for b, mask in enumerate(walk.masks):
                run(i, b, t_hidden[b], teacher, caps, stop_at=o_proj)
                tgt = _flat(t_hidden[b], mask) + _flat(run.got["y"], mask)
                run(i, b, walk.hidden[b], scales, caps, stop_at=o_proj)
                r = tgt - _flat(walk.hidden[b], mask) - _flat(run.got["y"], mask)
                c = run.got["c"][..., dims]  # kept heads' columns, gathered once
                gram(c, mask)
                C = _flat(c, mask)
                Atr += (C * (r @ WK)).reshape(-1, len(kept), hd).sum((0, 2))
                ones_row += (C * wsum).reshape(-1, len(kept), hd).sum((0, 2))
                rr += float(r.pow(2).sum())
                r_sum += float(r.sum())
                count += r.numel()
            AtA = (gram.G * M).reshape(len(kept), hd, len(kept), hd).sum((1, 3))
            if intercept:
                AtA, Atr = _with_intercept(AtA, Atr, ones_row, count, r_sum)
            delta, fit = solve_scales(
                AtA, Atr, rr, damp=damp, bound=bound, solver=solver, intercept=intercept
            )
            report.attention.append(fit)
            if failed(fit):
                report.stopped_at = f"{i}.attention"
                break
            if delta is not None:
                scales.head[i][kept.to(scales.head[i].device)] += delta.to(scales.head[i])
            del gram, M, WK
            # --- FFN -------------------------------------------------------------------------
            keptn = torch.nonzero(scales.neuron[i] != 0).flatten().to(down.weight.device)
            W2 = down.weight.detach().double()[:, keptn]
            M = W2.T @ W2
            gram = Gram(len(keptn), W2.device)
            Atr = torch.zeros(len(keptn), dtype=torch.float64, device=W2.device)
            rr = 0.0
            if adapter.pre_norm:  # FFN residual = layer input + attention output
                caps = {"y": (down, "out"), "z": (down, "in"), "att": (o_proj, "out")}
            else:  # post-LN: FFN residual = the FFN's (normalised) input
                caps = {"y": (down, "out"), "z": (down, "in"), "xf": (adapter.ffn_in(i)[0], "in")}

            def residual(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                if adapter.pre_norm:
                    return _flat(h, mask) + _flat(run.got["att"], mask)
                return _flat(run.got["xf"], mask)

            t_next = []
            for b, mask in enumerate(walk.masks):
                if cls_last_ffn and i == L - 1:
                    mask = _cls_only(mask)
                t_next.append(run(i, b, t_hidden[b], teacher, caps).detach())
                tgt = residual(t_hidden[b], mask) + _flat(run.got["y"], mask)
                run(i, b, walk.hidden[b], scales, caps, stop_at=down)
                r = tgt - residual(walk.hidden[b], mask) - _flat(run.got["y"], mask)
                z = run.got["z"][..., keptn]  # kept neurons, gathered once
                gram(z, mask)
                Z = _flat(z, mask)
                Atr += (Z * (r @ W2)).sum(0)
                rr += float(r.pow(2).sum())
            delta, fit = solve_scales(gram.G * M, Atr, rr, damp=damp, bound=bound, solver=solver)
            report.ffn.append(fit)
            if failed(fit):
                report.stopped_at = f"{i}.ffn"
                break
            if delta is not None:
                scales.neuron[i][keptn.to(scales.neuron[i].device)] += delta.to(scales.neuron[i])
            del gram, M, W2
            # --- advance both streams ----------------------------------------------------------
            if i < L - 1:
                s_next = [run(i, b, walk.hidden[b], scales, {}).detach() for b in range(len(walk.hidden))]
                t_hidden, walk.hidden = t_next, s_next
    return scales, report
