"""Least-squares mask tuning (Kwon et al. §4.3): kept mask values become real scales.

Layer by layer, bottom-up, the student (kept units, scales tuned so far) and the teacher (the dense
model, or a less-pruned "teacher assistant" mask) run on their own hidden states — the student's
inputs carry every earlier layer's pruning and tuning. Each sub-block's output is linear in its
scales: attention output = Σ_h m_h·(C_h W_O,hᵀ) + b_O, FFN output = Σ_j m_j·z_j w_jᵀ + b_2. The
scales are fitted so the student's residual stream after the sub-block, x_S + y_S(m), matches the
teacher's, x_T + y_T (for post-LN models that is the LayerNorm input; the LN itself is not linear):

    min_δ ‖A δ − r‖² + damp²‖δ‖²,   m = 1 + δ,   r = (x_T + y_T) − (x_S + y_S(1)),

a ridge toward 1 with ``damp = 1`` as in the paper (which solves it with LSMR). A is never formed:
its normal matrix AᵀA and Aᵀr are streamed over tokens (head Gram ⊙ W_Oᵀ W_O block sums; neuron
Gram ⊙ W2ᵀW2; the Grams are STAT's :class:`~statprune.calibration.Gram`, so bf16 activations on a GPU
take its exact-product half-precision path). The damped problem is then solved exactly by a Cholesky solve of the normal
equations (AᵀA + damp²I) δ = Aᵀr (default), or with scipy's LSMR on the equivalent square-root system R δ ≈ R⁻ᵀAᵀr, RᵀR = AᵀA, which
has the same solution but needs thousands of iterations on ill-conditioned FFN problems (minutes
per layer at d_ff = 1536). A sub-block keeps its 0/1 mask if the solve fails or a scale leaves
[−bound, bound] (the paper abandons such layers).
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

    def to_dict(self) -> dict:
        return {
            "attention": [vars(f) for f in self.attention],
            "ffn": [vars(f) for f in self.ffn],
        }


def solve_scales(
    AtA: torch.Tensor,
    Atr: torch.Tensor,
    rr: float,
    *,
    damp: float,
    bound: float,
    solver: str = "exact",
) -> tuple[torch.Tensor | None, SubBlockFit]:
    """δ minimising ‖Aδ − r‖² + damp²‖δ‖² from the normal statistics; None if abandoned.

    ``solver="exact"``: δ = (AᵀA + damp²I)⁻¹Aᵀr by a Cholesky solve — the point LSMR converges to. ``solver="lsmr"``: scipy's LSMR on the square-root system, as the released
    code (iterative; thousands of iterations on ill-conditioned FFN problems, and a run that hits
    the iteration cap counts as a failed solve).
    """
    n = Atr.numel()
    if n == 0:
        return None, SubBlockFit("nothing_kept", rr, rr)
    AtA = 0.5 * (AtA + AtA.T).double()
    Atr = Atr.double()
    failed = False
    if solver == "lsmr":
        from scipy.sparse.linalg import lsmr

        try:
            w, V = torch.linalg.eigh(AtA)
        except RuntimeError:  # torch.linalg.LinAlgError
            return None, SubBlockFit("solver_failed", rr, rr)
        w = w.clamp_min(0.0)
        pos = w > float(w.max()) * 1e-13
        if not bool(pos.any()):
            return None, SubBlockFit("solver_failed", rr, rr)
        sw = w[pos].sqrt()
        R = (sw[:, None] * V[:, pos].T).cpu().numpy()
        rhs = ((V[:, pos].T @ Atr) / sw).cpu().numpy()
        out = lsmr(R, rhs, damp=damp, atol=1e-10, btol=1e-10, conlim=1e12, maxiter=10 * n + 100)
        delta = torch.from_numpy(np.asarray(out[0], dtype=np.float64)).to(AtA.device)
        failed = int(out[1]) in (3, 6, 7)
    else:
        # (AᵀA + damp²I) δ = Aᵀr: positive definite for damp > 0, so a Cholesky solve (no inverse)
        eye = torch.eye(n, dtype=AtA.dtype, device=AtA.device)
        L, info = torch.linalg.cholesky_ex(AtA + max(damp**2, 1e-12 * float(AtA.diagonal().max())) * eye)
        if int(info) != 0:
            return None, SubBlockFit("solver_failed", rr, rr)
        delta = torch.cholesky_solve(Atr[:, None], L)[:, 0]
    if failed or not bool(torch.isfinite(delta).all()):
        return None, SubBlockFit("solver_failed", rr, rr)
    after = rr - 2.0 * float(delta @ Atr) + float(delta @ (AtA @ delta))
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


@torch.no_grad()
def tune_masks(
    adapter: Adapter,
    calib: Calibration,
    student: Masks,
    teacher: Masks | None,
    *,
    damp: float = 1.0,
    bound: float = 10.0,
    solver: str = "exact",
    progress: bool = True,
) -> tuple[Masks, TuneReport]:
    """Real-valued scales for the kept units of ``student`` (0/1 masks); pruned units stay 0."""
    walk = LayerWalk(adapter, calib)
    t_hidden = list(walk.hidden)
    scales = student.clone()
    report = TuneReport()
    hooks = MaskHooks(adapter)
    run = _Runner(adapter, walk, hooks)
    hd = adapter.head_dim
    with hooks.attached():
        for i in tqdm(range(adapter.num_layers), desc="kwon: tune", disable=not progress):
            o_proj, down = adapter.out_proj(i), adapter.down_proj(i)
            # --- attention -------------------------------------------------------------------
            kept = torch.nonzero(scales.head[i] != 0).flatten().cpu()
            W = o_proj.weight.detach().double()
            dims = (kept[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1).to(W.device)
            WK = W[:, dims]  # d × |K|·hd
            M = WK.T @ WK
            gram = Gram(len(dims), W.device)
            Atr = torch.zeros(len(kept), dtype=torch.float64, device=W.device)
            rr = 0.0
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
                rr += float(r.pow(2).sum())
            AtA = (gram.G * M).reshape(len(kept), hd, len(kept), hd).sum((1, 3))
            delta, fit = solve_scales(AtA, Atr, rr, damp=damp, bound=bound, solver=solver)
            report.attention.append(fit)
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
            if delta is not None:
                scales.neuron[i][keptn.to(scales.neuron[i].device)] += delta.to(scales.neuron[i])
            del gram, M, W2
            # --- advance both streams ----------------------------------------------------------
            s_next = [run(i, b, walk.hidden[b], scales, {}).detach() for b in range(len(walk.hidden))]
            t_hidden, walk.hidden = t_next, s_next
    return scales, report
