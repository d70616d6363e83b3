"""Run a Hugging Face causal LM one decoder layer at a time, straight from its shards.

The model is built as a skeleton (parameters on the meta device, buffers such
as rotary frequencies real), everything outside the decoder layers is loaded,
and each layer is materialized from the checkpoint only while it runs. Nothing
here knows a model by name:

- the decoder layers are the largest ``nn.ModuleList`` of
  ``num_hidden_layers`` same-typed blocks;
- each layer's call arguments (attention masks, position embeddings, cache
  positions, …) are captured by one forward of the model with every layer
  replaced by a recorder, so per-layer differences (Gemma-3's sliding and global
  layers) are kept;
- logits come from a second forward in which the last layer replays the
  streamed hidden states, so the model's own final norm, head and soft-capping
  apply.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from symprune.checkpoint import CheckpointReader
from symprune.errors import InvalidInputError, ModelError


def default_device(device: str | None = None) -> str:
    """``device`` checked against what torch sees (``cpu``, ``cuda``, ``cuda:N``); by
    default the GPU when there is one."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(f"device: {device!r} is not a device; use cpu or cuda[:N]") from e
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise InvalidInputError(f"device: {device!r} is not supported; use cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise InvalidInputError(
            f"device: {device} was asked for but torch sees no GPU "
            f"(torch {torch.__version__}, cuda available: no); use --device cpu"
        )
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise InvalidInputError(
            f"device: {device} does not exist; torch sees {count} GPU(s): cuda:0..cuda:{count - 1}"
        )
    return device


class TensorSource:
    """Reads tensors by name from a checkpoint directory (the validating Rust reader)."""

    def __init__(self, model_dir: Path):
        self.reader = CheckpointReader(model_dir)
        self.names = set(self.reader.names())

    def get(self, name: str) -> torch.Tensor:
        """A private copy of the tensor (the layer may be pruned in place)."""
        return self.reader.torch(name)

    def dtype(self) -> torch.dtype:
        """The floating dtype most of the checkpoint's tensors are stored in."""
        floats = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
        counts: dict[torch.dtype, int] = {}
        for name in self.names:
            dt = floats.get(self.reader.dtype(name))
            if dt is not None:
                counts[dt] = counts.get(dt, 0) + 1
        return max(counts, key=lambda dt: counts[dt]) if counts else torch.float32


def check_model_dir(model_dir: Path) -> None:
    """A clear error before any work when the directory is not a HF checkpoint."""
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a directory; pass a Hugging Face checkpoint folder")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; this is not a Hugging Face checkpoint")
    if not any(model_dir.glob("*.safetensors")):
        raise ModelError(
            f"{model_dir}: no *.safetensors weights; convert the checkpoint to safetensors first"
        )


def check_decoder_lm(model_dir: Path, config: Any) -> None:
    """A clear error for an encoder or encoder-decoder model (BERT, T5, ...): only
    decoder-only causal LMs are streamed layer by layer."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal.update([names] if isinstance(names, str) else names)
    architectures = getattr(config, "architectures", None) or []
    if (
        getattr(config, "is_encoder_decoder", False)
        or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or (architectures and not any(a in causal for a in architectures))
    ):
        kind = ", ".join(architectures) or config.model_type
        raise ModelError(
            f"{model_dir}: this model ({kind}) is not a decoder LM; symprune calibrates "
            "decoder-only causal LMs (Llama, Mistral, Qwen, Gemma, OPT, GPT-2, ...). Data-free "
            "methods (--method magnitude) prune any safetensors checkpoint"
        )


def _release_heap() -> None:
    """Hands freed heap memory back to the OS (glibc keeps it otherwise, and the
    resident set would grow by a layer's size per layer)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


_LIBC = _load_libc()


class _Stop(Exception):
    """Ends a recording forward after the last layer."""


class _Recorder(nn.Module):
    """Stands in for decoder layer ``index``: records its call, passes hidden states on."""

    def __init__(self, index: int, calls: list, last: bool):
        super().__init__()
        self.index, self.calls, self.last = index, calls, last

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.calls.append((self.index, hidden, args[1:], kwargs))
        if self.last:
            raise _Stop
        return hidden


class _Replay(nn.Module):
    """Stands in for a decoder layer in the head pass: returns given hidden states."""

    def __init__(self, output: Any):
        super().__init__()
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@dataclass
class Captured:
    """What one forward chunk needs to run any layer: its layer-0 input and every call."""

    hidden: torch.Tensor
    calls: list[tuple[tuple, dict]] = field(default_factory=list)  # per layer: (args, kwargs)


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class StreamedModel:
    """A causal LM whose decoder layers are materialized one at a time."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.dir = Path(model_dir)
        check_model_dir(self.dir)
        self.device = torch.device(device)
        self.source = TensorSource(self.dir)
        self.dtype = self.source.dtype()
        try:
            self.config = AutoConfig.from_pretrained(self.dir)
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{self.dir}/config.json: cannot be read by transformers: {e}") from e
        self.config.use_cache = False
        check_decoder_lm(self.dir, self.config)
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        self.model.eval()
        self.prefix, self.layers = self._find_layers()
        self._layer_types = [type(layer) for layer in self.layers]
        self.output_is_tuple: bool | None = None
        self._load_outside_layers()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def max_positions(self) -> int | None:
        return getattr(_text_config(self.config), "max_position_embeddings", None)

    def _find_layers(self) -> tuple[str, nn.ModuleList]:
        n = getattr(_text_config(self.config), "num_hidden_layers", None)
        best: tuple[int, str, nn.ModuleList] | None = None
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.ModuleList) or len(module) == 0:
                continue
            if n is not None and len(module) != n:
                continue
            if len({type(m) for m in module}) != 1:
                continue
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
        if best is None:
            raise ModelError(
                f"{self.dir}: cannot find the decoder layers of {type(self.model).__name__} "
                f"(no ModuleList of {n} identical blocks)"
            )
        return best[1], best[2]

    def _param_names(self, module: nn.Module) -> list[str]:
        persistent = [
            f"{mod_name}.{b}" if mod_name else b
            for mod_name, mod in module.named_modules()
            for b in mod._buffers
            if b not in mod._non_persistent_buffers_set and mod._buffers[b] is not None
        ]
        return [n for n, _ in module.named_parameters()] + persistent

    def _materialize(self, module: nn.Module, prefix: str, missing_ok: bool = False) -> None:
        state = {}
        expected = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        for name in self._param_names(module):
            key = f"{prefix}.{name}" if prefix else name
            if key in self.source.names:
                tensor = self.source.get(key)
                want = tuple(expected[name].shape)
                if tuple(tensor.shape) != want:
                    raise ModelError(
                        f"{self.dir}: tensor {key} has shape {tuple(tensor.shape)} in the "
                        f"checkpoint, but config.json makes it {want}; the config does not "
                        "match the weights"
                    )
                state[name] = tensor.to(self.device)
            elif not missing_ok:
                raise ModelError(
                    f"{self.dir}: tensor {key} is missing from the checkpoint; "
                    "it does not match its config.json"
                )
        module.load_state_dict(state, strict=False, assign=True)

    def _load_outside_layers(self) -> None:
        layers = self.layers
        placeholder = nn.ModuleList()
        parent = (
            self.model.get_submodule(self.prefix.rsplit(".", 1)[0])
            if "." in self.prefix
            else self.model
        )
        attr = self.prefix.rsplit(".", 1)[-1]
        setattr(parent, attr, placeholder)  # hide the layers while loading the rest
        try:
            self._materialize(self.model, "", missing_ok=True)
            if hasattr(self.model, "tie_weights"):
                self.model.tie_weights()
            self.model.to(self.device)
        finally:
            setattr(parent, attr, layers)

    def head_is_loaded(self) -> bool:
        """True when every parameter outside the layers is real (needed for logits)."""
        return all(
            not p.is_meta
            for n, p in self.model.named_parameters()
            if not n.startswith(self.prefix + ".")
        )

    def layer_prefix(self, index: int) -> str:
        return f"{self.prefix}.{index}"

    def load_layer(self, index: int) -> nn.Module:
        layer = self.layers[index]
        self._materialize(layer, self.layer_prefix(index))
        return layer

    def free_layer(self, index: int) -> None:
        self.layers[index].to("meta")
        _release_heap()

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor) -> Captured:
        """Layer-0 hidden states and every layer's call arguments for one chunk."""
        calls: list = []
        n = self.num_layers
        originals = list(self.layers)
        for i in range(n):
            self.layers[i] = _Recorder(i, calls, last=i == n - 1)
        try:
            self.model(input_ids=input_ids.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer
        if [c[0] for c in calls] != list(range(n)):
            raise ModelError(
                f"{type(self.model).__name__}: decoder layers were not called in order"
            )
        return Captured(hidden=calls[0][1], calls=[(c[2], c[3]) for c in calls])

    @torch.no_grad()
    def run_layer(self, index: int, hidden: torch.Tensor, captured: Captured) -> torch.Tensor:
        args, kwargs = captured.calls[index]
        out = self.layers[index](hidden.to(self.device), *args, **kwargs)
        if self.output_is_tuple is None:
            self.output_is_tuple = isinstance(out, tuple)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, final_hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits given the streamed output of its last layer."""
        if not self.head_is_loaded():
            raise ModelError(f"{self.dir}: the output head is missing from the checkpoint")
        hidden = final_hidden.to(self.device)
        replay = (hidden,) if self.output_is_tuple else hidden
        originals = list(self.layers)
        for i in range(self.num_layers):
            self.layers[i] = _Replay(replay)
        try:
            return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer
