"""Load → calibrate → prune: the one per-run pipeline of every entry point.

``statprune prune``, sweep runs (:func:`statprune.sweep.run.execute`), ``statprune bench`` and the
benchmark scripts all describe a run as a :class:`PruneJob` and go through :func:`run_prune`, so the
same job gets the same device, dtype, pad id, calibration draw and FLOPs budget whichever way it
was started. Everything cheap is validated before anything expensive happens (sparsity, method,
options, task, split), so bad input fails in a second with one clear message.

The FLOPs budget is measured at the sequence length the model actually sees
(:func:`flops_seq_len`): an explicit ``seq_len``; else, when a ``max_length`` is given, the window
length for language modelling and the task's mean example length capped at ``max_length`` for
the other tasks (examples are truncated there); else the task's ``flops_seq_len``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from statprune.calibration import Calibration, make_calibration
from statprune.errors import StatpruneError
from statprune.pruner import PruneResult, Target, method_options, prune
from statprune.runtime import DTYPES, pad_token_id, resolve_device, resolve_dtype
from statprune.timing import StageTimer

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DTYPES",
    "PruneJob",
    "PruneRun",
    "calibration_for",
    "data_record",
    "flops_seq_len",
    "limited",
    "pad_token_id",
    "resolve_device",
    "resolve_dtype",
    "run_prune",
]

DEFAULT_BATCH_SIZE = 16  # calibration sequences per forward batch, every entry point


@dataclass(frozen=True)
class PruneJob:
    """One pruning of one model: what ``statprune prune``, a sweep run and ``bench`` each describe.

    ``task`` is the task the pruned model serves (its head and FLOPs length; default: the
    calibration task). ``calib_task`` None means the caller supplies the calibration (``bench``'s
    random tokens, at ``max_length`` tokens per sequence).
    """

    model: str
    method: str
    sparsity: float
    calib_task: str | None
    calib_size: int
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    calib_split: str = "train"
    max_length: int | None = None  # truncation / LM window of the calibration data; None = the task's
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    dtype: str = "float32"
    seq_len: float | None = None  # FLOPs-model sequence length override; None = flops_seq_len()
    task: str | None = None
    calib_limit: int | None = None  # only the first N rows of the calibration split (smoke tests)
    random_head: str = "refuse"  # a task head the checkpoint lacks: refuse | warn | allow (load_model)

    def validate(self) -> None:
        """Check everything that needs no model or data; raise :class:`StatpruneError` naming the field."""
        Target(self.sparsity, 1.0)
        method_options(self.method, self.options)
        for what, v in (("calibration size", self.calib_size), ("batch size", self.batch_size)):
            if v <= 0:
                raise StatpruneError(f"{what} must be positive, got {v}")
        for what, v in (("max_length", self.max_length), ("seq_len", self.seq_len)):
            if v is not None and v <= 0:
                raise StatpruneError(f"{what} must be positive, got {v}")
        resolve_dtype(self.dtype)
        if self.calib_task is None and self.max_length is None:
            raise StatpruneError("a job without a calibration task needs max_length (tokens per sequence)")
        if self.calib_task is not None:
            from statprune.data import get_task

            get_task(self.calib_task).canonical_split(self.calib_split)
        if self.task is not None:
            from statprune.data import get_task

            get_task(self.task)

    def serving_task(self) -> Any:
        """The task the pruned model serves (None for random calibration without a task)."""
        from statprune.data import get_task

        name = self.task or self.calib_task
        return None if name is None else get_task(name)


def flops_seq_len(task: Any, max_length: int | None, override: float | None = None) -> float:
    """The one rule for the FLOPs budget's sequence length: the length the model actually sees.

    ``override`` if given; else with ``max_length``: the LM window (``max_length``) for ``lm``
    tasks or a task-less run, and ``min(task.flops_seq_len, max_length)`` for the others (mean
    example length, truncated at ``max_length``); else the task's ``flops_seq_len``.
    """
    if override is not None:
        return float(override)
    if max_length is None:
        if task is None:
            raise StatpruneError("the FLOPs sequence length needs a task or a max_length")
        return float(task.flops_seq_len)
    if task is None or task.kind == "lm":
        return float(max_length)
    return float(min(task.flops_seq_len, max_length))


def limited(task: Any, split: str, n: int | None) -> Any:
    """``task`` with only the first ``n`` rows of ``split`` (``calib_limit``/``eval_limit``)."""
    if n is None:
        return task
    from statprune.evaluation.evaluate import first_rows

    return first_rows(task, task.canonical_split(split), n)


def calibration_for(
    task: Any,
    tokenizer: Any,
    n: int,
    seed: int,
    *,
    split: str = "train",
    max_length: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Calibration:
    """Draw ``n`` examples of ``task``'s split without replacement (nested across sizes)."""
    examples = task.encode(tokenizer, split, max_length or task.max_length)
    return make_calibration(examples, n, seed, batch_size=batch_size, pad_token_id=pad_token_id(tokenizer))


def data_record(task: Any, split: str, calib: Calibration | None = None) -> dict[str, Any]:
    """What a record says about the data of one stage: task, split, source, content hash (and draw)."""
    from statprune.data.origin import indices_sha256

    out: dict[str, Any] = {"task": task.name, "split": task.canonical_split(split), **task.provenance()}
    if calib is not None:
        out["num_examples"] = calib.num_examples
        out["indices_sha256"] = indices_sha256(calib.indices)
    return out


@dataclass
class PruneRun:
    """A finished :func:`run_prune`: the pruned model and what the record needs."""

    model: torch.nn.Module
    tokenizer: Any
    result: PruneResult
    calib: Calibration
    target: Target
    data: dict[str, Any]  # {"calibration": data_record(...)} (empty for caller-supplied calibration)
    device: torch.device

    def report(self) -> dict[str, Any]:
        """The pruning report: :meth:`PruneResult.to_dict` plus the data it was calibrated on."""
        return {**self.result.to_dict(), "data": self.data}


def run_prune(
    job: PruneJob,
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    calib: Calibration | None = None,
    timer: StageTimer | None = None,
    extra_options: Mapping[str, Any] | None = None,
    adapter: Any = None,
    say: Any = None,
) -> PruneRun:
    """Prune per ``job``; pass ``model``/``tokenizer`` to reuse a loaded model, ``calib`` to supply
    the calibration. ``timer`` records the ``load``, ``calibration`` and ``prune`` stages;
    ``extra_options`` are defaults under the job's options (e.g. progress bars off)."""
    from statprune.models.load import load_model

    job.validate()
    timer = timer or StageTimer()
    say = say or (lambda msg: None)
    task = job.serving_task()
    device = resolve_device(job.device)
    # STAT weights=stream: a model larger than the GPU is loaded into host memory and streamed
    stream = job.options.get("weights") == "stream" and device.type != "cpu"
    if model is None:
        with timer("load"):
            load_on = torch.device("cpu") if stream else device
            say(f"load {job.model} ({job.dtype}, {load_on})")
            model, tokenizer = load_model(
                job.model,
                task=task,
                dtype=resolve_dtype(job.dtype),
                device=str(load_on),
                random_head=job.random_head,  # type: ignore[arg-type]
            )
    data: dict[str, Any] = {}
    if calib is None:
        if job.calib_task is None:
            raise StatpruneError("a job without a calibration task needs the calibration passed in")
        from statprune.data import get_task

        calib_task = limited(get_task(job.calib_task), job.calib_split, job.calib_limit)
        with timer("calibration"):
            calib = calibration_for(
                calib_task,
                tokenizer,
                job.calib_size,
                job.seed,
                split=job.calib_split,
                max_length=job.max_length,
                batch_size=job.batch_size,
            )
            data["calibration"] = data_record(calib_task, job.calib_split, calib)
        say(
            f"calibration: {calib.num_examples} examples, {calib.num_tokens} tokens "
            f"from {job.calib_task}/{job.calib_split}"
        )
    target = Target(job.sparsity, flops_seq_len(task, job.max_length, job.seq_len))
    with timer("prune"):
        say(f"prune: {job.method} to sparsity {job.sparsity} at seq_len {target.seq_len:g}")
        result = prune(
            model,
            calib,
            target,
            method=job.method,
            seed=job.seed,
            options={**(extra_options or {}), **({"device": str(device)} if stream else {}), **job.options},
            adapter=adapter,
        )
    return PruneRun(model, tokenizer, result, calib, target, data, device)
