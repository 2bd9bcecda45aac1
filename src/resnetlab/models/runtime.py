"""ONNX Runtime as the inference engine behind ``optimize_for_inference``.

The BatchNorm-folded network is exported once per (weights, input shape, opset) to ONNX with a
dynamic batch axis, cached under ``$RESNETLAB_HOME/onnx`` (written atomically, with its
SHA-256 beside it: an entry that does not match is rebuilt), and run by an ORT session with
torch's intra-op thread count. Its idle workers sleep instead of spinning: on cores shared with
other work (another job, the server's own decoding) spinning takes the cores from the threads
that have work. On the CPUs measured, ORT's kernels beat torch's folded channels-last path
(docs/BENCHMARKS.md). onnxruntime is an optional extra (``resnetlab[ort]``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..console import say
from ..download import resnetlab_home
from ..errors import ResnetlabError
from ..files import atomic_write

try:  # the optional extra: without it, optimize_for_inference keeps the torch path
    import onnxruntime
except ImportError:  # pragma: no cover - exercised by monkeypatching ``onnxruntime`` to None
    onnxruntime = None

OPSET = 17
INPUT, OUTPUT = "input", "logits"
FORMAT = 1  # part of every cache key: raise it when the export changes
CACHE_BYTES = 2 * 2**30  # exports kept under $RESNETLAB_HOME/onnx; the least recently used go
TOLERANCE = 1e-4  # largest |ORT - torch| on a fresh export, relative to the logits' scale
NEEDS = "the onnxruntime engine needs onnxruntime: pip install 'resnetlab[ort]'"


def available() -> bool:
    """Whether onnxruntime can be imported here."""
    return onnxruntime is not None


def onnx_bytes(model: nn.Module, example: torch.Tensor, output: str = OUTPUT) -> bytes:
    """``model`` (eval mode) as an ONNX file in memory: the TorchScript-based exporter at
    ``OPSET`` with a dynamic batch axis (fast, and without the onnx package)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # this exporter writes to a file object too
            input_names=[INPUT],
            output_names=[output],
            dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def cache_dir() -> Path:
    """Where exports are cached: ``$RESNETLAB_HOME/onnx``."""
    return resnetlab_home() / "onnx"


def cache_key(model: nn.Module, shape: tuple[int, ...]) -> str:
    """SHA-256 of what the export depends on: the traced graph, every tensor of the state dict
    (name, dtype, shape, bytes), the input shape, opset, torch version and this format."""
    digest = hashlib.sha256()
    facts = {"format": FORMAT, "opset": OPSET, "torch": torch.__version__, "input": shape,
             "class": type(model).__qualname__}  # fmt: skip
    digest.update(json.dumps(facts, sort_keys=True).encode())
    digest.update(str(fx.Tracer().trace(model)).encode())  # the plain twin differs here only
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class StartUp:
    """What making a session cost: the export and its check (0 from the cache), hashing the
    weights and reading the cache, and creating the ORT session, in seconds."""

    export_s: float
    lookup_s: float
    session_s: float
    cached: bool
    max_abs_diff: float | None = None

    @property
    def total_s(self) -> float:
        return self.export_s + self.lookup_s + self.session_s


class OnnxRuntimeModule(nn.Module):
    """A folded network run by ONNX Runtime: called on a float tensor (N, C, H, W) on the CPU,
    in either layout, it returns the logits as a tensor, as the model would. One session per
    input shape (C, H, W), made on first use or for ``input_size`` at once; inference only
    (``.train()`` is refused). With ``fallback``, a shape ORT cannot run (an operator it
    lacks, outputs off by more than ``TOLERANCE``) runs on the folded module, channels-last.
    ``spinning``: let idle ORT workers spin (ORT's default; faster only on idle cores)."""

    def __init__(
        self,
        folded: nn.Module,
        input_size: tuple[int, ...] | None = None,
        *,
        threads: int | None = None,
        cache: bool = True,
        fallback: bool = False,
        spinning: bool = False,
    ) -> None:
        super().__init__()
        if onnxruntime is None:
            raise ResnetlabError(NEEDS)
        self.training = False
        self.threads = int(threads or torch.get_num_threads())
        self.cache, self.fallback, self.spinning = cache, fallback, spinning
        self._folded = (folded.eval(),)  # in a tuple: not a submodule, so no parameters here
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.startups: dict[tuple[int, ...], StartUp] = {}
        if input_size is not None:
            self.session(tuple(input_size))

    def train(self, mode: bool = True) -> OnnxRuntimeModule:
        if mode:
            raise ResnetlabError(
                "an ONNX Runtime engine runs inference only; train the torch model instead."
            )
        return self

    @property
    def startup(self) -> StartUp | None:
        """The start-up cost of the first session made."""
        return next(iter(self.startups.values()), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ResnetlabError(
                f"the onnxruntime engine runs on the CPU, not {x.device}; use --engine torch "
                "or --device cpu."
            )
        if x.dim() != 4:
            raise ResnetlabError(f"expected images (N, C, H, W), got a tensor of {tuple(x.shape)}")
        session = self.session(tuple(x.shape[1:]))
        if session is None:  # ORT failed for this shape; the fallback runs it
            return self._folded[0](x)
        (out,) = session.run(None, {INPUT: x.detach().float().contiguous().numpy()})
        return torch.from_numpy(out)

    def session(self, shape: tuple[int, ...]) -> Any:
        """The ORT session for inputs of ``shape`` (C, H, W), made once (None: the fallback
        runs them, ORT having failed for this model)."""
        if shape not in self.sessions:
            try:
                self.sessions[shape], self.startups[shape] = self._make(shape)
            except (ResnetlabError, RuntimeError, ValueError, OSError) as exc:
                if not self.fallback:
                    raise ResnetlabError(f"onnxruntime cannot run this model ({exc}); use "
                                         "--engine torch.") from exc  # fmt: skip
                say(f"onnxruntime cannot run this model ({exc}); using torch instead")
                self._folded[0].to(memory_format=torch.channels_last)
                self.sessions[shape] = None
        return self.sessions[shape]

    def _make(self, shape: tuple[int, ...]) -> tuple[Any, StartUp]:
        folded = self._folded[0]
        clock = time.perf_counter()
        key = cache_key(folded, shape) if self.cache else None
        data = read_entry(key) if key is not None else None
        lookup_s = time.perf_counter() - clock
        if data is not None:
            clock = time.perf_counter()
            try:
                session = self._session(data)
                return session, StartUp(0.0, lookup_s, time.perf_counter() - clock, True)
            except Exception as exc:  # ORT's load errors have no common type
                say(f"onnxruntime cannot load the cached export ({exc}); exporting it again")
        clock = time.perf_counter()
        data = onnx_bytes(folded, torch.zeros(1, *shape))
        export_s = time.perf_counter() - clock
        clock = time.perf_counter()
        session = self._session(data)
        session_s = time.perf_counter() - clock
        clock = time.perf_counter()
        diff = self._check(session, shape)
        if key is not None:
            write_entry(key, data, {"input": list(shape), "max_abs_diff": diff})
        export_s += time.perf_counter() - clock
        return session, StartUp(export_s, lookup_s, session_s, False, diff)

    def _session(self, data: bytes) -> Any:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads  # torch's, so the two compare fairly
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(self.spinning)))
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def _check(self, session: Any, shape: tuple[int, ...]) -> float:
        """Largest |ORT - torch| on a seeded batch of two; over the tolerance is an error."""
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = self._folded[0](x).float()
        (got,) = session.run(None, {INPUT: x.numpy()})
        diff = float((torch.from_numpy(got) - expected).abs().max())
        if not diff <= TOLERANCE * max(1.0, float(expected.abs().max())):
            raise ResnetlabError(f"its ONNX export differs from torch by {diff:.3g}")
        return diff


def read_entry(key: str) -> bytes | None:
    """The cached export for ``key``, or None when there is none or it does not match the
    SHA-256 recorded beside it (then it is rebuilt)."""
    path = cache_dir() / f"{key}.onnx"
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        say(f"the cached ONNX export {path.name} is unreadable ({exc}); exporting it again")
        return None
    if not isinstance(facts, dict) or facts.get("sha256") != hashlib.sha256(data).hexdigest():
        say(f"the cached ONNX export {path.name} does not match its checksum; exporting it again")
        return None
    os.utime(path)  # most recently used: pruned last
    return data


def write_entry(key: str, data: bytes, facts: dict[str, Any]) -> None:
    """Cache ``data`` for ``key`` (the file, then its facts with the SHA-256: an entry is only
    read once both are in place), then prune the cache to ``CACHE_BYTES``."""
    folder = cache_dir()
    facts = facts | {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                     "opset": OPSET, "torch": torch.__version__,
                     "onnxruntime": getattr(onnxruntime, "__version__", None)}  # fmt: skip
    try:
        with atomic_write(folder / f"{key}.onnx") as handle:
            handle.write(data)
        with atomic_write(folder / f"{key}.json") as handle:
            handle.write(json.dumps(facts, indent=1).encode())
        prune(folder, keep=key)
    except (OSError, ResnetlabError) as exc:  # a cache that cannot be written costs time only
        say(f"could not cache the ONNX export in {folder} ({exc}); it will be exported again")


def prune(folder: Path, keep: str, limit: int = CACHE_BYTES) -> None:
    """Delete the least recently used entries until the cache holds at most ``limit`` bytes."""
    entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in entries:
        total += path.stat().st_size
        if total > limit and path.stem != keep:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
