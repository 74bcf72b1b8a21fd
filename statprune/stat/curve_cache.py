"""On-disk cache of STAT's round-1 error curves: allocation-only variants skip the measure walk.

The measure walk (and, for ``error_norm=loss``, the backward pass before it) is most of STAT's
cost, yet every allocation variant of one model, calibration draw and seed measures the same
curves. With ``STATPRUNE_CURVE_CACHE=1`` in the environment, the first run stores them under
``<statprune cache>/stat_curves/<key>.pt`` (plus ``<key>.json``: what they were made from) and a
later run with the same key loads them instead of measuring.

The key (sha256, :func:`curve_key`) is deny-by-default: every byte of the model's state dict, its
class and config (less its local path), every tensor of every calibration batch in order, the
seed, the compute device (type and CUDA name) and model dtype, the target's ``seq_len`` and
:data:`~statprune.flops.FLOPS_MODEL_VERSION` (unit FLOPs depend on both), every STAT option the
caller passes (all but an explicit allow-list, :data:`statprune.stat.prune.AFTER_MEASURE`), the
source of the code that measures (:data:`SOURCES`), and the torch and transformers versions.

It is an environment switch, not an option, so that it changes neither run ids nor fingerprints
(a cache must not change results; a hit is bit-identical to measuring). Files are written to a
temporary name and renamed (atomic on one file system): concurrent writers of one key leave one
whole file, a reader never sees a partial one; an unreadable file counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from statprune.allocation import BlockCurve
from statprune.cache import cache_dir
from statprune.calibration import Calibration
from statprune.data.origin import content_sha256
from statprune.errors import StatpruneError
from statprune.flops import FLOPS_MODEL_VERSION
from statprune.provenance import source_files
from statprune.stat.allocate import StatCurve
from statprune.stat.loss_weights import Weights

ENV = "STATPRUNE_CURVE_CACHE"
FORMAT = 1  # bump when the stored layout or the meaning of a curve changes
_PACKAGE = Path(__file__).resolve().parents[1]
# the code the measure pass runs (its source enters the key: an edit there invalidates the cache)
SOURCES = ("stat", "adapters", "calibration.py", "allocation.py", "flops.py", "streaming.py")
_CURVE_TYPES = {c.__name__: c for c in (BlockCurve, StatCurve)}
log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether ``$STATPRUNE_CURVE_CACHE`` turns the cache on (1/true/yes/on; unset, 0/false/no/off: off)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise StatpruneError(f"{ENV}={os.environ[ENV]!r}: expected 1/true/yes/on or 0/false/no/off")


def folder() -> Path:
    return cache_dir() / "stat_curves"


@dataclass(frozen=True)
class CurveKey:
    digest: str
    made_from: dict[str, Any]  # what the digest hashes, readable (the JSON sidecar)


@dataclass
class Measured:
    """What round 1 measured: the curves and (``error_norm=loss``) the loss weights."""

    curves: list[BlockCurve]
    weights: Weights | None


def _update(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict: names, dtypes, shapes and bytes (a tied tensor counts under each name)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()


def calibration_digest(calib: Calibration) -> str:
    """sha256 over every batch's tensors (token ids, masks, labels, …) in order."""
    h = hashlib.sha256()
    for b, batch in enumerate(calib.batches):
        for k in sorted(batch):
            h.update(f"{b}|{k}|".encode())
            v = batch[k]
            if isinstance(v, torch.Tensor):
                _update(h, v)
            else:
                h.update(repr(v).encode())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 over the measuring code's files (:data:`SOURCES`), by path relative to the package."""
    files = []
    for entry in SOURCES:
        path = _PACKAGE / entry
        files += source_files(path, (".py",)) if path.is_dir() else [path]
    return content_sha256(files, root=_PACKAGE)


def _config(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    out = {k: v for k, v in cfg.to_dict().items() if k != "_name_or_path"}  # where it was loaded from
    out["_attn_implementation"] = getattr(cfg, "_attn_implementation", None)
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def curve_key(
    model: torch.nn.Module,
    calib: Calibration,
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    seq_len: float,
    options: dict[str, Any],
) -> CurveKey:
    """The key of round 1's curves (module docstring); ``options``: the measure-affecting options."""
    import transformers

    made_from = {
        "format": FORMAT,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": _config(model),
        "weights_sha256": weights_digest(model),
        "calibration_sha256": calibration_digest(calib),
        "calibration": {"batches": len(calib.batches), "examples": calib.num_examples},
        "seed": seed,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype),
        "seq_len": float(seq_len),
        "flops_model_version": FLOPS_MODEL_VERSION,
        "options": json.loads(json.dumps(options, sort_keys=True, default=str)),
        "code_sha256": code_digest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    canon = json.dumps(made_from, sort_keys=True, separators=(",", ":"))
    return CurveKey(hashlib.sha256(canon.encode()).hexdigest(), made_from)


def _pack(x: Any) -> Any:
    if isinstance(x, torch.Tensor):  # remember where it was, to give allocation the same tensors
        return {"tensor": x.detach().cpu(), "on_device": x.device.type != "cpu"}
    return x


def _unpack(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict) and "tensor" in x:
        return x["tensor"].to(device) if x["on_device"] else x["tensor"]
    return x


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(key: CurveKey, measured: Measured, *, measure_seconds: float | None = None) -> None:
    """Store ``measured`` under ``key`` (sidecar first, then the curves: both atomic renames).

    A failure to write (read-only or full disk) is logged, never raised: the run goes on uncached.
    """
    data = {
        "format": FORMAT,
        "key": key.digest,
        "curves": [
            {"type": type(c).__name__, **{f.name: _pack(getattr(c, f.name)) for f in fields(c)}}
            for c in measured.curves
        ],
        "weights": None
        if measured.weights is None
        else [[i, k, _pack(g)] for (i, k), g in sorted(measured.weights.items())],
    }
    side = {**key.made_from, "key": key.digest, "created": time.time(), "measure_seconds": measure_seconds}
    base = folder() / key.digest
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(side, indent=1, sort_keys=True).encode()
        _atomic_write(base.with_suffix(".json"), lambda f: f.write(text))
        _atomic_write(base.with_suffix(".pt"), lambda f: torch.save(data, f))
    except OSError as e:
        log.warning("stat curve cache: could not write %s (%s); going on without it", base, e)


def load(key: CurveKey, device: torch.device) -> Measured | None:
    """The curves stored under ``key``, tensors back where they were computed; ``None``: a miss."""
    path = (folder() / key.digest).with_suffix(".pt")
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data["format"] != FORMAT or data["key"] != key.digest:
            return None
        curves = []
        for c in data["curves"]:
            cls = _CURVE_TYPES[c.pop("type")]
            curves.append(cls(**{k: _unpack(v, device) for k, v in c.items()}))
        weights = data["weights"]
        if weights is not None:
            weights = {(int(i), str(k)): _unpack(g, device) for i, k, g in weights}
    except Exception as e:  # a cache is never a reason to fail: measure again (and overwrite)
        log.warning("stat curve cache: unreadable %s (%s); measuring again", path, e)
        return None
    return Measured(curves, weights)
