"""One benchmark run: build a model, calibrate, prune with per-stage timings, measure speed; one record.

The record (JSON, ``<out_dir>/<name>.json``) holds the configuration, the machine, every stage time
(model build, calibration, and the method's own stages: for STAT ``calibration_forward``,
``gram``, ``factorization``, ``allocation``, ``weight_update``), the wall time of the pruning, peak
device memory, achieved sparsity, and, on request, the pruned model's speed against the dense one
(``speed``) and the agreement of the GPU and CPU paths (``compare_cpu``). Models are built directly
on the target device in the target dtype (``random:<shape>`` never touches host memory at 7B).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from statprune.calibration import Calibration
from statprune.errors import StatpruneError
from statprune.pipeline import DEFAULT_BATCH_SIZE, PruneJob


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark; ``model`` is a :func:`statprune.models.load.load_model` spec."""

    model: str
    method: str = "stat"
    sparsity: float = 0.3
    calib_size: int = 128
    seq_len: int = 2048  # tokens per calibration sequence (the job's max_length)
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    dtype: str = "bfloat16"
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    layers: int | None = None  # keep only the first `layers` layers (a slice, to extrapolate from)
    flops_seq_len: float | None = None  # FLOPs-length override (default: pipeline.flops_seq_len)
    calib_task: str | None = None  # real calibration data instead of random tokens
    num_labels: int = 0  # encoders: a random classification head and random labels (task-loss methods)
    speed: bool = False
    speed_batch: int = 32
    speed_seq: int = 128
    gen_prompt: int = 128
    gen_tokens: int = 32
    compile: bool = False  # also time the torch.compile'd forward and decode step
    freeze: bool = False  # with compile: Inductor freezing (weights as constants, same-input GEMMs fused)
    compare_cpu: bool = False
    same_as: str | None = None  # a record of the same run: are the kept units the same?
    ceilings: bool = False
    out_dir: str | None = "benchmarks/results"
    name: str | None = None

    def prune_job(self) -> PruneJob:
        """The pruning part of the benchmark as the pipeline's job (random tokens: no calib task)."""
        return PruneJob(
            model=self.model,
            method=self.method,
            sparsity=self.sparsity,
            calib_task=self.calib_task,
            calib_size=self.calib_size,
            seed=self.seed,
            options=self.options,
            max_length=self.seq_len,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            seq_len=self.flops_seq_len,
        )

    def validate(self) -> None:
        self.prune_job().validate()
        if self.layers is not None and (self.layers <= 0 or not self.model.startswith("random:")):
            raise StatpruneError("--layers takes a positive count and needs a random:<shape> model")
        if self.freeze and not self.compile:
            raise StatpruneError("--freeze applies to the compiled model: add --compile")
        if self.same_as and self.out_dir and self.record_path().resolve() == Path(self.same_as).resolve():
            raise StatpruneError(
                f"--same-as {self.same_as} is where this run's record would go: it would be overwritten; "
                "give --name or --out"
            )
        if self.num_labels < 0 or (self.num_labels and self.calib_task is not None):
            raise StatpruneError(
                "--num-labels takes a count ≥ 0 and is for random calibration (no --calib-task)"
            )

    def record_path(self) -> Path:
        return Path(self.out_dir or ".") / f"{self.record_name()}.json"

    def record_name(self) -> str:
        if self.name:
            return self.name
        base = self.model.removeprefix("random:").replace("/", "_")
        if self.layers is not None:
            base += f"-L{self.layers}"
        return f"{base}-{self.method}-s{self.sparsity:g}-{self.calib_size}x{self.seq_len}-{self.dtype}"


# what decides the kept units: a reference record must agree on all of them (``profile`` only times)
SAME_RUN_KEYS = (
    "model", "method", "sparsity", "calib_size", "seq_len", "batch_size", "dtype", "seed", "layers",
    "flops_seq_len", "calib_task", "num_labels",
)  # fmt: skip


def reference_result(cfg: BenchConfig) -> dict[str, Any]:
    """The ``result`` of the record ``cfg.same_as``, after checking that it is the same run: kept units
    are comparable only for the same model, data, target and options (code and machine may differ)."""
    path = Path(cfg.same_as or "")
    try:
        ref = json.loads(path.read_text())
        ref_cfg, result = ref["config"], ref["result"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StatpruneError(f"--same-as {path}: not a readable bench record ({e})") from e
    ref_cfg = {**ref_cfg, "calib_size": ref_cfg.get("calib_size", ref_cfg.get("calib"))}  # older records
    ours = dataclasses.asdict(cfg)
    differ = {k: (ref_cfg.get(k), ours[k]) for k in SAME_RUN_KEYS if ref_cfg.get(k) != ours[k]}
    options = [
        {k: v for k, v in o.items() if k != "profile"} for o in (ref_cfg.get("options") or {}, cfg.options)
    ]
    if options[0] != options[1]:
        differ["options"] = tuple(options)
    if differ:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
        raise StatpruneError(f"--same-as {path}: another run ({shown})")
    if "kept_units" not in result:
        raise StatpruneError(f"--same-as {path}: the record has no kept units")
    return result


def compare_with_reference(ref: dict[str, Any], path: str, result: dict[str, Any]) -> dict[str, Any]:
    """Kept units and output error of this run (``result``) against the reference record's (``ref``,
    from :func:`reference_result`)."""
    kept, ref_kept = result.get("kept_units", {}), ref["kept_units"]
    differing = {
        k: [ref_kept.get(k), kept.get(k)]
        for k in sorted(set(kept) | set(ref_kept))
        if kept.get(k) != ref_kept.get(k)
    }
    return {
        "record": path,
        "same_kept_units": not differing,
        "differing_units": differing,
        "output_rel_err": [ref.get("output_rel_err"), result.get("output_rel_err")],
    }


def environment(device: torch.device) -> dict[str, Any]:
    import os

    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_GiB=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return env


def _label_task(cfg: BenchConfig) -> Any:
    """A classification task with no rows: it only gives the model a ``num_labels`` head."""
    if not cfg.num_labels:
        return None
    from statprune.data.tasks import Task

    return Task(
        name="random-labels",
        kind="classification",
        num_labels=cfg.num_labels,
        metric_names=(),
        flops_seq_len=cfg.seq_len,
        max_length=cfg.seq_len,
        loader=lambda split: [],
        description="uniform random labels for benchmarking methods that differentiate a task loss",
    )


def build_model(cfg: BenchConfig, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model (eval mode, on ``device`` in ``dtype``) and its tokenizer (None for a layer slice)."""
    from statprune.models.load import load_model

    task = _label_task(cfg)
    if cfg.layers is None:
        return load_model(cfg.model, task=task, dtype=dtype, device=str(device))
    # A slice of a named shape: the same random build as load_model, with fewer layers.
    from statprune.models.load import configure_head, model_class
    from statprune.models.shapes import shape_config

    config = shape_config(cfg.model.removeprefix("random:"))
    config.num_hidden_layers = cfg.layers
    configure_head(config, task)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(0)
        with device:
            model = model_class(config, task).from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), None


def synthetic_calibration(
    n: int, seq_len: int, vocab: int, *, batch_size: int, seed: int, num_labels: int = 0
) -> Calibration:
    """``n`` sequences of ``seq_len`` uniform random token ids (no padding), in batches; with
    ``num_labels`` also a uniform random class label per sequence."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq_len), generator=gen)  # skip the usual special ids 0-2
    labels = torch.randint(0, max(num_labels, 1), (n,), generator=gen)
    batches = []
    for s in range(0, n, batch_size):
        batch = {
            "input_ids": ids[s : s + batch_size],
            "attention_mask": torch.ones_like(ids[s : s + batch_size]),
        }
        if num_labels:
            batch["labels"] = labels[s : s + batch_size]
        batches.append(batch)
    return Calibration(batches=batches, num_examples=n, indices=list(range(n)))


def _calibration(cfg: BenchConfig, model: Any, tokenizer: Any) -> Calibration | None:
    """Random-token calibration; None with a calibration task (the pipeline draws it)."""
    if cfg.calib_task is not None:
        if tokenizer is None:
            raise StatpruneError("--calib-task needs a tokenizer; it cannot be combined with --layers")
        return None
    return synthetic_calibration(
        cfg.calib_size,
        cfg.seq_len,
        model.config.vocab_size,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        num_labels=cfg.num_labels,
    )


def _method_options(cfg: BenchConfig, **extra: Any) -> dict[str, Any]:
    """The ``extra`` options the method has a field for (progress bars off, profiling on)."""
    from statprune.pruner import load_methods

    _, cls = load_methods().get(cfg.method)
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in extra.items() if k in names}


def _speed(model: Any, cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Speed of ``model``; with ``cfg.freeze`` Inductor compiles with freezing, which treats the
    weights as constants and concatenates the GEMMs that share an input (q/k/v, gate/up) into one:
    fewer kernels per layer, the same stock modules."""
    from statprune.bench.speed import decode_latency, forward_speed
    from statprune.models.load import is_decoder

    if cfg.compile and cfg.freeze:
        import torch._inductor.config as inductor_config

        freezing: Any = inductor_config.patch(freezing=True)
    else:
        freezing = contextlib.nullcontext()
    vocab = model.config.vocab_size
    with freezing:
        out = {
            "forward": forward_speed(
                model,
                batch=cfg.speed_batch,
                seq=cfg.speed_seq,
                vocab=vocab,
                device=device,
                compile=cfg.compile,
            )
        }
        if is_decoder(model.config):
            out["decode"] = decode_latency(
                model,
                prompt=cfg.gen_prompt,
                new_tokens=cfg.gen_tokens,
                vocab=vocab,
                device=device,
                compile=cfg.compile,
            )
    return out


# speedup name -> timing key, for the forward and the decode record
_FORWARD_SPEEDUPS = {
    "forward": "ms",
    "forward_eager": "eager_ms",
    "forward_graph": "graph_ms",
    "forward_compiled": "compiled_ms",
    "forward_compiled_graph": "compiled_graph_ms",
}
_DECODE_SPEEDUPS = {
    "decode_step": "step_ms",
    "decode_step_eager": "step_eager_ms",
    "decode_step_graph": "step_graph_ms",
    "decode_step_compiled": "step_compiled_ms",
    "decode_step_compiled_graph": "step_compiled_graph_ms",
    "generate": "generate_ms_per_token",
}


def _speedups(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, float | None]:
    """dense/pruned time per timing that both sides have (None where one is missing)."""

    def ratio(part: str, key: str) -> float | None:
        a, b = dense[part].get(key), pruned[part].get(key)
        return a / b if a and b else None

    out = {name: ratio("forward", key) for name, key in _FORWARD_SPEEDUPS.items()}
    if "decode" in dense:
        out.update({name: ratio("decode", key) for name, key in _DECODE_SPEEDUPS.items()})
    return out


@torch.no_grad()
def model_output(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Float32 outputs on ``ids``: decoder logits (LM head included, so a SliceGPT model's rotated
    hidden basis does not matter), or an encoder's last hidden states."""
    from statprune.models.load import is_decoder

    if is_decoder(model.config):
        return model(input_ids=ids, use_cache=False).logits.float()
    return getattr(model, "base_model", model)(input_ids=ids).last_hidden_state.float()


def compare_models(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, Any]:
    """Max over tensors of ‖a − b‖ / ‖a‖ (b moved to a's device in float64); shapes must match."""
    sa, sb = a.state_dict(), b.state_dict()
    worst, worst_name, same = 0.0, None, set(sa) == set(sb)
    for k, ta in sa.items():
        tb = sb.get(k)
        if tb is None or ta.shape != tb.shape:
            same = False
            continue
        x, y = ta.detach().double().cpu(), tb.detach().double().cpu()
        rel = float((x - y).norm() / x.norm()) if x.norm() > 0 else float((x - y).norm())
        if rel > worst:
            worst, worst_name = rel, k
    return {
        "same_shapes": same,
        "max_rel_weight_diff": worst if same else float("inf"),
        "worst_tensor": worst_name,
    }


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the record (and writes it when ``out_dir``)."""
    from statprune.adapters import get_adapter
    from statprune.flops import cost_report
    from statprune.pipeline import run_prune
    from statprune.provenance import provenance
    from statprune.pruner import prune
    from statprune.runtime import check_positions, resolve_device, resolve_dtype
    from statprune.timing import StageTimer

    cfg.validate()
    reference = reference_result(cfg) if cfg.same_as is not None else None  # before any work
    job = cfg.prune_job()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype)
    stages = StageTimer(device)
    record: dict[str, Any] = {"config": {**dataclasses.asdict(cfg), "options": dict(cfg.options)}}
    record["environment"] = environment(device)
    if cfg.ceilings:
        from statprune.bench.ceilings import measure_ceilings

        with stages("ceilings"):
            record["ceilings"] = measure_ceilings(device)
    t_all = time.perf_counter()
    with stages("model_build"):
        model, tokenizer = build_model(cfg, device, dtype)
    check_positions(model.config, cfg.seq_len, "--seq-len")
    if cfg.speed:
        check_positions(model.config, cfg.speed_seq, "--speed-seq")
    with stages("calibration"):
        calib = _calibration(cfg, model, tokenizer)
    adapter = get_adapter(model)
    if cfg.speed:
        with stages("speed_dense"):
            dense_speed = _speed(model, cfg, device)
    cpu_model = copy.deepcopy(model).to("cpu") if cfg.compare_cpu else None
    # held-out random tokens (another seed) for the pruned model's output error against the dense one
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    eval_ids = torch.randint(
        3, model.config.vocab_size, (min(8, cfg.calib_size), min(cfg.seq_len, 512)), generator=eval_gen
    ).to(device)
    dense_out = model_output(model, eval_ids)
    dense_speed_costs = cost_report(adapter, cfg.speed_seq)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    run = run_prune(
        job,
        model=model,
        tokenizer=tokenizer,
        calib=calib,
        timer=stages,
        extra_options=_method_options(cfg, progress=False, profile=True),
        adapter=adapter,
    )
    calib, target = run.calib, run.target
    res = run.result.to_dict()
    if run.data:
        record["data"] = run.data
    record["result"] = {
        k: res[k]
        for k in (
            "sparsity_target",
            "sparsity_achieved",
            "seq_len",
            "flops_dense",
            "flops_pruned",
            "params_dense",
            "params_pruned",
            "calib_size",
            "calib_tokens",
            "prune_seconds",
            "peak_memory_bytes",
            "timings",
            "layers",
        )
    }
    record["result"]["diagnostics"] = {k: v for k, v in res["diagnostics"].items() if k != "kept_units"}
    record["result"]["kept_units"] = res["diagnostics"].get("kept_units")
    pruned_out = model_output(model, eval_ids)
    record["result"]["output_rel_err"] = float((pruned_out - dense_out).norm() / dense_out.norm())
    del dense_out, pruned_out
    if device.type == "cuda":
        record["result"]["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    if cfg.speed:
        with stages("speed_pruned"):
            pruned_speed = _speed(model, cfg, device)
        pruned_costs = cost_report(adapter, cfg.speed_seq)
        record["speed"] = {
            "dense": dense_speed,
            "pruned": pruned_speed,
            "speedup": _speedups(dense_speed, pruned_speed),
            "flops_ratio": dense_speed_costs.flops / pruned_costs.flops,
            "params_ratio": dense_speed_costs.params_prunable / pruned_costs.params_prunable,
            "seq_len": cfg.speed_seq,
        }
    if cpu_model is not None:
        with stages("compare_cpu"):
            cpu_opts = {**_method_options(cfg, progress=False, device="cpu"), **cfg.options}
            cpu_result = prune(cpu_model, calib, target, method=cfg.method, seed=cfg.seed, options=cpu_opts)
            cmp = compare_models(cpu_model, model)
            cmp["same_kept_units"] = cpu_result.diagnostics.get("kept_units") == res["diagnostics"].get(
                "kept_units"
            )
            cmp["cpu_prune_seconds"] = cpu_result.prune_seconds
            cmp["cpu_timings"] = cpu_result.timings
            record["compare_cpu"] = cmp
    if reference is not None:
        record["same_as"] = compare_with_reference(reference, str(cfg.same_as), record["result"])
    record["stages"] = stages.totals
    record["wall_seconds"] = time.perf_counter() - t_all
    record["provenance"] = provenance()
    if cfg.out_dir:
        from statprune.io import write_json_atomic

        path = cfg.record_path()
        write_json_atomic(path, record)
        record["path"] = str(path)
    return record


def format_table(record: dict[str, Any]) -> str:
    """A short human-readable summary of a record."""
    r = record["result"]
    cfg = record["config"]
    lines = [
        f"{cfg['model']} {cfg['method']} sparsity {cfg['sparsity']:g} "
        f"calib {cfg.get('calib_size', cfg.get('calib'))}x{cfg['seq_len']} {cfg['dtype']} on "
        f"{record['environment'].get('gpu', 'cpu')}",
        f"  {'stage':24s} {'seconds':>9s}",
    ]
    for k, v in record["stages"].items():
        lines.append(f"  {k:24s} {v:9.2f}")
    for k, v in r["timings"].items():
        lines.append(f"    prune/{k:18s} {v:9.2f}")
    lines += [
        f"  {'prune wall':24s} {r['prune_seconds']:9.2f}",
        f"  peak memory {r['peak_memory_bytes'] / 2**30:.1f} GiB; achieved sparsity {r['sparsity_achieved']:.3f}; "
        f"output rel err {r['output_rel_err']:.3f}",
    ]
    if "speed" in record:
        s = record["speed"]
        sp = " ".join(f"{k}={v:.2f}" for k, v in s["speedup"].items() if v is not None)
        modes = [
            (part, key) for part, key in (("forward", "mode"), ("decode", "step_mode")) if part in s["dense"]
        ]
        sp += "".join(
            f"; {part} = dense {s['dense'][part][key]} / pruned {s['pruned'][part][key]}"
            for part, key in modes
        )
        lines.append(
            f"  speedup {sp}; FLOPs ratio {s['flops_ratio']:.2f} (s={s['seq_len']}); params ratio "
            f"{s['params_ratio']:.2f}"
        )
    if "same_as" in record:
        c = record["same_as"]
        err = " → ".join(f"{e:.4f}" if e is not None else "?" for e in c["output_rel_err"])
        lines.append(
            f"  against {c['record']}: same kept units {c['same_kept_units']}"
            + (f" (differ: {c['differing_units']})" if c["differing_units"] else "")
            + f"; output rel err {err}"
        )
    if "compare_cpu" in record:
        c = record["compare_cpu"]
        lines.append(
            f"  GPU vs CPU: same kept units {c['same_kept_units']}, max rel weight diff "
            f"{c['max_rel_weight_diff']:.2e} ({c['worst_tensor']})"
        )
    return "\n".join(lines)
