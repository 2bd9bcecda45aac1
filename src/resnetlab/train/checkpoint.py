"""Atomic checkpoints that load with ``weights_only=True`` (read by the one
``weights.io.load_checkpoint``), and the RNG states they carry.

A checkpoint is written to a temporary file in the same folder and moved into place with
``os.replace``, so a crash during the save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..errors import ResnetlabError
from ..files import atomic_write
from ..weights.io import load_checkpoint
from .optim import fill_momentum_buffers


def save_checkpoint(payload: dict[str, Any], path: Path | str) -> Path:
    """Write ``payload`` with ``torch.save`` atomically (temp file + fsync + ``os.replace``)."""
    with atomic_write(path) as f:
        torch.save(payload, f)
    return Path(path)


def non_finite_entries(*states: dict[str, torch.Tensor] | None) -> list[str]:
    """Names of the floating-point entries holding NaN or Inf (one host sync for all)."""
    named = [(k, v) for state in states if state for k, v in state.items()
             if torch.is_tensor(v) and v.is_floating_point()]  # fmt: skip
    if not named:
        return []
    finite = torch.stack([torch.isfinite(v).all() for _, v in named]).tolist()
    return [k for (k, _), ok in zip(named, finite, strict=True) if not ok]


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors, lists and numbers."""
    version, internal, gauss = random.getstate()
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_checkpoint(config: Any, path: Path, resumable: set[str]) -> dict | None:
    """The checkpoint to continue from, or None for a fresh run; refuses to clobber a run.

    Its tensors stay on the CPU (the RNG states must): :func:`restore` copies the rest over."""
    if not config.resume:
        if path.exists():
            raise ResnetlabError(
                f"{path.parent} already holds a run; pass --resume to continue it or choose "
                "another --out."
            )
        return None
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    saved, now = ckpt["config"], config.to_dict()
    for key in saved.keys() - resumable:
        if json.dumps(saved[key], default=str) != json.dumps(now.get(key), default=str):
            raise ResnetlabError(
                f"resume: {key} is {now.get(key)!r} but the run at {path.parent} used "
                f"{saved[key]!r}; drop that setting or start a new --out."
            )
    return ckpt


def restore(ckpt: dict, model, optimizer, ema, meters, tensor_lr) -> float:
    """Load a training checkpoint into live objects; returns the best validation error."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    fill_momentum_buffers(optimizer)  # a checkpoint may predate a parameter's first update
    for group in optimizer.param_groups:  # the lr's type follows this run, not the saved one
        value = float(group["lr"])
        group["lr"] = torch.tensor(value, device=tensor_lr) if tensor_lr is not None else value
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])
    meters.load_state_dict(ckpt["meters"])
    return float(ckpt["best_val_error"])


def training_payload(state: Any, meters: Any, best: float, preprocess, classes) -> dict:
    """Everything a bit-exact resume needs (the schedule follows from ``step``), plus what
    predicting and evaluating from the file read: ``preprocess`` and ``classes``."""
    return {
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "elapsed_s": state.elapsed_s,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "meters": meters.state_dict(),
        "best_val_error": best,
        "rng": rng_state(),
        "config": state.config.to_dict(),
        "preprocess": preprocess,
        "classes": list(classes),
    }
