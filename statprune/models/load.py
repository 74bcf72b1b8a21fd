"""Load a model and its tokenizer from an alias, a local directory, a hub id or a random shape.

``spec`` forms, tried in this order:

* ``random:<shape>`` — random weights (seed 0) of a shape from :mod:`statprune.models.shapes`, with an
  in-memory toy tokenizer; built directly on ``device`` (``meta`` costs nothing).
* an asset alias (``minilm-l6``, ``smollm2-135m``) — the fetched folder (fetched on first use).
* an existing directory — a transformers checkpoint, or a pruned one (``config.json`` has
  ``statprune_shapes``), which :func:`statprune.models.checkpoint.load_pruned` rebuilds.
* a ``.gguf`` file of a supported family — converted once (transformers' GGUF loading, dequantised to
  fp32 safetensors) into ``cache_dir()/gguf/<name>-<key>/``, keyed by path, size and mtime.
* ``org/name`` — a hub id through ``from_pretrained``. When the hub is offline or unreachable the
  local hub cache is tried and otherwise a :class:`StatpruneError` is raised at once (transformers
  alone would retry for ~20 s).

The architecture follows the task: none or ``lm`` → the bare encoder (``AutoModel``) or the causal
LM; classification/regression → a sequence-classification head with ``task.num_labels``.
A model type without an adapter is refused (one line) before any weight is read.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from statprune.errors import StatpruneError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from statprune.data.tasks import Task

log = logging.getLogger(__name__)
RandomHead = Literal["refuse", "warn", "allow"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PRUNED_KEY = "statprune_shapes"
HUB_PROBE_TIMEOUT_S = 3.0
GGUF_MANIFEST = "statprune-gguf.json"
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}  # GGUF architecture names that differ from model_type


def load_model(
    spec: str,
    *,
    task: Task | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    random_head: RandomHead = "warn",
) -> tuple[PreTrainedModel, Any]:
    """Model (in eval mode, on ``device``) and tokenizer for ``spec``; see the module doc for the forms.

    A checkpoint without weights for the task's head (a base model on a classification task) gets a
    random head: ``random_head`` says whether that is refused (a :class:`StatpruneError`), warned
    about, or expected (``allow``: fine-tuning trains it).
    """
    from statprune.assets import asset_path, model_aliases

    head = (task, random_head)

    if spec.startswith("random:"):
        return build_random(spec.removeprefix("random:"), task=task, dtype=dtype, device=device)
    if spec in model_aliases():
        return _load_local(asset_path(spec), head, dtype, device)
    path = Path(spec).expanduser()
    if path.is_dir():
        if PRUNED_KEY in _read_config(path):
            from statprune.models.checkpoint import load_pruned

            return load_pruned(path, dtype=dtype, device=device)
        return _load_local(path, head, dtype, device)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _load_local(gguf_checkpoint(path), head, dtype, device)
    if path.exists():
        raise StatpruneError(
            f"{spec!r} is a file; pass the model's directory (the one with config.json) or a .gguf file"
        )
    if HUB_ID.match(spec):
        return _load_hub(spec, head, dtype, device)
    close = difflib.get_close_matches(spec, model_aliases(), n=1)
    raise StatpruneError(
        f"unknown model {spec!r}: not a model alias ({', '.join(model_aliases())}), an existing directory, "
        "a hub id 'org/name' or 'random:<shape>'" + (f" (did you mean {close[0]!r}?)" if close else "")
    )


def build_random(
    shape: str, *, task: Task | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """Randomly initialised model of a named shape (seed 0, caller's RNG untouched) and a toy tokenizer."""
    from statprune.models.shapes import shape_config, toy_tokenizer

    config = shape_config(shape)
    cls = model_class(config, task)
    configure_head(config, task)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        with dev:
            model = cls.from_config(config, dtype=dtype, attn_implementation="sdpa")
    tokenizer = toy_tokenizer(config)
    _fix_pad(model, tokenizer, task)
    return model.eval(), tokenizer


def is_decoder(config: PretrainedConfig) -> bool:
    """Causal LM families (Llama, GPT-2, …) as opposed to bidirectional encoders (BERT, DistilBERT)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = config.model_type
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def model_class(config: PretrainedConfig, task: Task | None) -> Any:
    """The transformers auto class that fits the task (none/lm: base encoder or causal LM)."""
    import transformers as tf

    kind = task.kind if task is not None else "lm"
    if kind == "lm":
        return tf.AutoModelForCausalLM if is_decoder(config) else tf.AutoModel
    if kind in ("classification", "regression"):
        return tf.AutoModelForSequenceClassification
    if kind == "qa":
        return tf.AutoModelForQuestionAnswering
    raise StatpruneError(f"no model head for task kind {kind!r}")


def configure_head(config: PretrainedConfig, task: Task | None) -> None:
    """Write the head options a classification/regression task needs into the config."""
    if task is None or task.kind not in ("classification", "regression"):
        return
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.kind == "regression" else "single_label_classification"
    from statprune.data.local import label_names

    names = label_names(task)
    if names and all(v == f"LABEL_{k}" for k, v in config.id2label.items()):  # a new head: name its labels
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}


def _fix_pad(model: PreTrainedModel, tokenizer: Any, task: Task | None) -> None:
    """Decoders often lack a pad token: use eos (tokenizer side; masks make the value irrelevant).

    A sequence-classification head on a decoder finds each row's last token through the pad id, so
    only there is the pad id also written into the model config.
    """
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    needs_pad = (
        task is not None and task.kind in ("classification", "regression") and is_decoder(model.config)
    )
    if needs_pad and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise StatpruneError(f"{path} has no config.json; is it a saved transformers model directory?")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise StatpruneError(f"{cfg} is not valid JSON: {e}") from None


def attention_implementation(cls: Any, config: PretrainedConfig) -> str:
    """``sdpa`` when the concrete class behind an auto class supports it, else ``eager``."""
    try:
        concrete = cls._model_mapping[type(config)] if hasattr(cls, "_model_mapping") else cls
    except KeyError:
        concrete = None
    return "sdpa" if getattr(concrete, "_supports_sdpa", False) else "eager"


def _load_pretrained(
    source: str, head: tuple[Task | None, RandomHead], dtype: torch.dtype, device: str, **hub: Any
) -> tuple[PreTrainedModel, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from statprune.adapters import check_supported

    task, random_head = head
    try:
        config = AutoConfig.from_pretrained(source, **hub)
    except (ValueError, KeyError) as e:  # a model type transformers does not know
        raise StatpruneError(f"cannot read the config of {source}: {_first_line(e)}") from None
    check_supported(config.model_type)
    configure_head(config, task)
    cls = model_class(config, task)
    kw = {"config": config, "dtype": dtype, "output_loading_info": True, **hub}
    with _quiet_load_report(task):
        model, info = cls.from_pretrained(
            source, attn_implementation=attention_implementation(cls, config), **kw
        )
    missing = sorted(info.get("missing_keys") or ())
    if task is not None and task.kind in HEAD_KINDS and missing:
        _RANDOM_HEADS[model] = missing
    check_head(source, task, missing, random_head)
    tokenizer = AutoTokenizer.from_pretrained(source, **hub)
    _fix_pad(model, tokenizer, task)
    return model.to(device).eval(), tokenizer


def _load_local(
    path: Path, head: tuple[Task | None, RandomHead], dtype: torch.dtype, device: str
) -> tuple[PreTrainedModel, Any]:
    _read_config(path)
    try:
        return _load_pretrained(str(path), head, dtype, device, local_files_only=True)
    except OSError as e:
        raise StatpruneError(f"cannot load the model in {path}: {e}") from None


def _load_hub(
    hub_id: str, head: tuple[Task | None, RandomHead], dtype: torch.dtype, device: str
) -> tuple[PreTrainedModel, Any]:
    offline = hub_offline()
    if not offline and not hub_reachable():
        offline = True
    try:
        return _load_pretrained(hub_id, head, dtype, device, local_files_only=offline)
    except OSError as e:
        if offline:
            raise StatpruneError(
                f"cannot load {hub_id!r}: the Hugging Face Hub is unreachable (offline mode or no network) "
                "and the model is not in the local hub cache. Download it where the hub is reachable "
                "(e.g. `huggingface-cli download` or `save_pretrained`), then pass that local directory "
                f"instead, or use a packaged alias or 'random:<shape>'. ({e.__class__.__name__})"
            ) from None
        raise StatpruneError(f"cannot load {hub_id!r} from the Hugging Face Hub: {e}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def gguf_checkpoint(path: Path) -> Path:
    """The folder converted from a GGUF file (converted on first use, atomically, under a lock)."""
    import hashlib
    import shutil
    import tempfile

    from statprune.assets import _make_readable, convert_gguf, sha256_file
    from statprune.cache import cache_dir
    from statprune.io import file_lock

    path = path.resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = cache_dir() / "gguf"
    final = root / f"{path.stem}-{key}"
    if (final / GGUF_MANIFEST).is_file():
        return final
    _check_gguf_architecture(path)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{final.name}.lock"):
        if (final / GGUF_MANIFEST).is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
        try:
            try:
                convert_gguf(path, tmp)
            except (ValueError, KeyError, NotImplementedError, RuntimeError) as e:
                raise StatpruneError(f"cannot convert the GGUF file {path}: {_first_line(e)}") from None
            manifest = {"source": str(path), "size": st.st_size, "sha256": sha256_file(path)}
            (tmp / GGUF_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _make_readable(tmp)  # mkdtemp is private; a shared cache must not be
            if final.exists():  # a leftover without manifest: never complete
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_gguf_architecture(path: Path) -> None:
    """Refuse a GGUF file of an unsupported family before converting it."""
    from statprune.adapters import check_supported

    try:
        from gguf import GGUFReader
    except ImportError:
        raise StatpruneError("the 'gguf' package is needed to load .gguf files; pip install gguf") from None

    try:
        field = GGUFReader(path).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, IndexError) as e:
        raise StatpruneError(f"{path} is not a readable GGUF model file ({_first_line(e)})") from None
    check_supported(GGUF_MODEL_TYPES.get(arch, arch))


HEAD_KINDS = ("classification", "regression", "qa")
_RANDOM_HEADS: weakref.WeakKeyDictionary[torch.nn.Module, list[str]] = weakref.WeakKeyDictionary()


def random_head_keys(model: torch.nn.Module) -> list[str]:
    """The head weights that :func:`load_model` had to initialise randomly for this model (usually none)."""
    return list(_RANDOM_HEADS.get(model, ()))


def check_head(source: str, task: Task | None, missing: list[str], policy: RandomHead) -> None:
    """A task head that the checkpoint lacks was just randomly initialised: scores would be chance."""
    if task is None or task.kind not in HEAD_KINDS or not missing or policy == "allow":
        return
    msg = (
        f"{source} has no weights for the {task.kind} head of task {task.name!r} ({', '.join(missing)}): "
        "it would be randomly initialised and score at chance"
    )
    if policy == "refuse":
        raise StatpruneError(
            f"{msg}. Fine-tune it first (statprune finetune --model {source} --task {task.name}, or a "
            "[finetune] table in a sweep spec) and use that checkpoint, or pass --allow-random-head"
        )
    log.warning("statprune: warning: %s", msg)


@contextlib.contextmanager
def _quiet_load_report(task: Task | None) -> Iterator[None]:
    """transformers' multi-line report of missing head weights; :func:`check_head` says it in one line."""
    if task is None or task.kind not in HEAD_KINDS:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def hub_offline() -> bool:
    """Offline by configuration (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``)."""
    if os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    import huggingface_hub

    return huggingface_hub.is_offline_mode()


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub endpoint, bounded in time even when DNS hangs (proxies honoured).

    Only a successful answer counts: sandboxes and corporate proxies answer blocked hosts with 4xx.
    """
    import urllib.request

    from huggingface_hub import constants

    result: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
            result.append(True)
        except (OSError, ValueError):  # URLError, HTTPError, timeouts
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
