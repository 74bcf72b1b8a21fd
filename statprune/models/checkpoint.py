"""Save and reload physically pruned models as stock transformers models.

A pruned checkpoint is a normal ``save_pretrained`` folder (safetensors, never pickle) whose
``config.json`` also holds ``statprune_shapes`` (per-layer heads, KV heads, head dim, neurons). Loading
builds the stock architecture from the config, resizes each layer to its recorded shape through the
adapter, runs any method-specific restore hooks named in ``statprune_restore`` (e.g. SliceGPT's
residual shortcuts), then loads the weights strictly, so every tensor must match.

``config.statprune_stored_config`` (optional) maps config attributes to the values written to disk
in place of the in-memory ones: stock configs validate themselves at init and at save (e.g. Llama
refuses a hidden size that is not a multiple of the head count), so a method whose in-memory shape
breaks such a rule stores valid values and its restore hook re-applies its own.
:func:`check_saveable` runs that validation up front, so a method can refuse before its work.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from statprune.adapters import LayerShape, get_adapter
from statprune.errors import StatpruneError
from statprune.io import write_json_atomic

REPORT_NAME = "prune_report.json"


def is_checkpoint(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "statprune_shapes" in json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def check_output_dir(out_dir: Path) -> None:
    """Refuse to overwrite a non-empty folder unless it is a statprune checkpoint."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_checkpoint(out_dir))):
        raise StatpruneError(
            f"output {out_dir} exists and is not a statprune checkpoint; choose another --out"
        )


@contextlib.contextmanager
def _stored_values(config: Any) -> Any:
    """Temporarily give ``config`` the values recorded for disk in ``statprune_stored_config``."""
    stored = dict(getattr(config, "statprune_stored_config", None) or {})
    saved = {key: getattr(config, key) for key in stored}
    try:
        for key, value in stored.items():
            setattr(config, key, value)
        yield config
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


def check_saveable(config: Any, changes: dict[str, Any] | None = None) -> None:
    """Raise a StatpruneError now if ``config`` with ``changes`` applied could not be saved."""
    cfg = copy.deepcopy(config)
    for key, value in (changes or {}).items():
        setattr(cfg, key, value)
    try:
        with _stored_values(cfg):
            if hasattr(cfg, "validate"):
                cfg.validate()
            cfg.to_json_string()
    except Exception as e:  # the validators' error types differ across transformers versions
        raise StatpruneError(f"the pruned model's config could not be saved: {e}") from e


def save_pruned(model: torch.nn.Module, tokenizer: Any, out_dir: Path, report: dict | None = None) -> Path:
    """Write the pruned model (+ tokenizer + report) to ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    adapter = get_adapter(model)
    model.config.statprune_shapes = [s.to_dict() for s in adapter.shapes()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        with _stored_values(model.config):
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            write_json_atomic(tmp / REPORT_NAME, report)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _skip_init() -> contextlib.AbstractContextManager:
    try:
        from transformers.initialization import no_init_weights

        return no_init_weights()
    except ImportError:  # older transformers: random init is only slower
        return contextlib.nullcontext()


def load_pruned(path: Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Rebuild a stock transformers model with the recorded per-layer shapes; returns (model, tokenizer)."""
    import transformers

    path = Path(path)
    if not is_checkpoint(path):
        raise StatpruneError(f"{path} is not a statprune checkpoint (no statprune_shapes in config.json)")
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise StatpruneError(f"{path}: unknown architecture {arch!r} in config.json")
    # Built where it will run, in its dtype: a 7B checkpoint never takes a float32 copy in host memory.
    with _skip_init(), torch.device(device):
        model = cls._from_config(config, dtype=dtype) if dtype is not None else cls(config)
    adapter = get_adapter(model)
    adapter.set_shapes([LayerShape(**s) for s in config.statprune_shapes])
    for hook in getattr(config, "statprune_restore", None) or []:
        mod, fn = hook.split(":")
        getattr(importlib.import_module(mod), fn)(model, config)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise StatpruneError(
            f"{path}: checkpoint does not match its shapes (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    tokenizer = None
    with contextlib.suppress(Exception):
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, tokenizer
