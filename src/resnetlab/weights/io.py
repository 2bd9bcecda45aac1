"""Reading and writing checkpoints: torch files (``weights_only``) and safetensors, atomically.

Torch files are never unpickled with arbitrary code: ``torch.load(..., weights_only=True)``
refuses anything but tensors and plain containers, and that refusal is explained in one line.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError
from ..files import atomic_write

StateDict = dict[str, torch.Tensor]
# Where training scripts keep the weights inside a checkpoint dict, in order of preference.
STATE_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "ema")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
SAFETENSORS_SUFFIXES = (".safetensors",)
CARRIED = ("classes", "preprocessing", "licence")  # pretrained_cfg entries save_weights keeps


class CorruptFileError(ResnetlabError):
    """A weights file that is truncated or damaged (as opposed to one refused for its content)."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Everything in a checkpoint file; safetensors files give ``{"state_dict", "metadata"}``."""
    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"checkpoint {path} does not exist; check the path.")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path)
    return _load_torch(path)


def check_weights_file(path: str | Path, name: str) -> None:
    """Raise CorruptFileError unless ``path`` is a complete weights file of the kind ``name`` has.

    For downloads whose size and hash are unknown: zip-format torch files are checked member by
    member (CRC), safetensors by their header's extent, legacy torch files by loading them.
    """
    path = Path(path)
    if Path(name).suffix in SAFETENSORS_SUFFIXES:
        _load_safetensors(path)
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                records = [n for n in archive.namelist() if n.endswith("data.pkl")]
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CorruptFileError(f"{path} is truncated or corrupt ({exc}).") from None
        if bad is not None or not records:
            raise CorruptFileError(
                f"{path} is truncated or corrupt ({bad or 'no data.pkl'} unreadable)."
            )
    else:
        _load_torch(path)


def _load_torch(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc) and "Unsupported operand" not in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            raise ResnetlabError(
                f"{path} holds pickled code or custom objects"
                + (f" ({found.group(1)})" if found else "")
                + ", not only tensors, and was refused for safety; re-save it as a plain state "
                "dict (or .safetensors) where it came from."
            ) from None
        raise CorruptFileError(
            f"{path} is truncated or corrupt ({first}); copy it again."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CorruptFileError(
            f"{path} is truncated or corrupt ({first}); download or copy it again."
        ) from None
    if isinstance(obj, Mapping):
        return dict(obj)
    raise ResnetlabError(f"{path} holds a {type(obj).__name__}, not a state dict.")


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is truncated or corrupt ({exc}); copy it again.") from None
    return {"state_dict": tensors, "metadata": _decode_metadata(metadata)}


def load_weights(path: str | Path, *, key: str | None = None) -> StateDict:
    """The state dict in a checkpoint file (plain, or under ``state_dict``/``model``/... keys)."""
    checkpoint = load_checkpoint(path)
    return _tensors(extract_state_dict(checkpoint, key=key, where=str(path)))


def extract_state_dict(checkpoint: Mapping, *, key: str | None = None, where: str = "") -> dict:
    """Pick the weights out of a checkpoint dict; ``key`` forces one (e.g. ``"ema"``)."""
    if key is not None:
        if key not in checkpoint:
            raise ResnetlabError(f"{where}: no {key!r} entry; it has {', '.join(checkpoint)}.")
        return checkpoint[key]
    if any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    for name in STATE_KEYS:
        if isinstance(checkpoint.get(name), Mapping):
            return checkpoint[name]
    raise ResnetlabError(
        f"{where}: found no weights (top-level keys: {', '.join(map(str, checkpoint))}); "
        f"expected a state dict or one under {', '.join(STATE_KEYS)}."
    )


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata`` dict saved with :func:`save_weights`, or ``{}``."""
    meta = load_checkpoint(path).get("metadata")
    return dict(meta) if isinstance(meta, Mapping) else {}


def _tensors(state: Mapping) -> StateDict:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and k != "n_averaged"}


def normalise_state_dict(state: Mapping, model: nn.Module | None = None) -> StateDict:
    """Strip wrapper prefixes (``module.``, ``_orig_mod.``) and rename a ``linear`` classifier.

    The CIFAR reference implementations call the classifier ``linear``; resnetlab calls it
    ``fc`` (the model's ``head_name``), so ``linear.*`` becomes ``fc.*`` when the model has no
    ``linear`` module. timm's ResNet state dicts (``resnetXd``, ``resnet50c`` included) need no
    renaming: resnetlab's deep stem and pooled shortcuts use timm's names (``conv1.0``…
    ``conv1.6``, ``bn1``, ``downsample.1``/``.2`` after the pool, ``fc``).
    """
    out: StateDict = {}
    for key, value in _tensors(state).items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    head = getattr(model, "head_name", "fc") if model is not None else "fc"
    model_keys = set(model.state_dict()) if model is not None else set()
    if any(k.startswith("linear.") for k in out) and not any(
        k.startswith("linear.") for k in model_keys
    ):
        out = {
            (head + k[len("linear") :] if k.startswith("linear.") else k): v for k, v in out.items()
        }
    return out


def save_weights(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    format: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights atomically as ``.safetensors`` or a torch file (chosen by suffix).

    A torch file holds the plain state dict, or ``{"state_dict", "metadata"}`` when metadata
    is given; safetensors keeps the metadata in its header (JSON-encoded values).
    """
    path = Path(path)
    format = format or ("safetensors" if path.suffix in SAFETENSORS_SUFFIXES else "torch")
    if format not in ("safetensors", "torch"):
        raise ResnetlabError(f"unknown weights format {format!r}; use 'safetensors' or 'torch'.")
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    meta = dict(metadata or {})
    info = getattr(model_or_state, "info", None)
    if info is not None:
        meta.setdefault("model", info.name)
    cfg = getattr(model_or_state, "pretrained_cfg", None)
    for key in CARRIED:  # what a later load needs to use the weights correctly
        if isinstance(cfg, Mapping) and cfg.get(key) is not None:
            meta.setdefault(key, cfg[key])
    tensors = _plain_tensors(state)
    with atomic_write(path) as f:
        if format == "safetensors":
            from safetensors.torch import save

            f.write(save(tensors, metadata=_encode_metadata(meta)))
        else:
            torch.save({"state_dict": tensors, "metadata": meta} if meta else tensors, f)
    return path


def _plain_tensors(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Detached, contiguous CPU tensors that share no storage (what safetensors requires)."""
    seen: set[int] = set()
    out: StateDict = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().cpu()
        storage = tensor.untyped_storage()
        whole = tensor.is_contiguous() and tensor.nbytes == storage.nbytes()
        if storage.data_ptr() in seen or not whole:
            tensor = tensor.contiguous().clone()
        seen.add(storage.data_ptr())
        out[key] = tensor
    return out


def _encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _decode_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
