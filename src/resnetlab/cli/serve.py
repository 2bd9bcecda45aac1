"""``resnetlab serve RUN_OR_MODEL``: a local web page and ``POST /predict`` JSON API for one
model: top-k classes, the decision at the run's threshold, and the Grad-CAM overlay; concurrent
requests run as one batch (``--max-batch``, ``--batch-window-ms``, ``--max-queue``).

The address is taken first, before the model is loaded: a port in use is one line, at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import socket
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING

from ..errors import ResnetlabError
from ..groups import Checked, DeviceSettings, InferenceSettings, ModelSettings, device_name
from ..serve import load_served
from ..serve.batcher import BatchingSettings
from ..settings import REQUIRED, compose, setting
from .flags import add_settings, settings_from_args

NEEDS = "`resnetlab serve` needs fastapi, uvicorn and python-multipart: install resnetlab[serve]"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(kw_only=True)
@compose(InferenceSettings, ModelSettings, DeviceSettings, BatchingSettings,
         exclude=("tta", "model", "model_options"), defaults={"source": REQUIRED})  # fmt: skip
class ServeSettings(Checked):
    """``resnetlab serve``: where it listens; the model, device, engine and batching from the
    groups."""

    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(8000, "port", ">= 0")
    max_upload_mb: float = setting(20.0, "largest upload accepted, in MiB", "> 0")
    log_level: str = setting("warning", "uvicorn's log level", choices=LOG_LEVELS)

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        pretrained: str | None = setting()
        device: str = setting()
        top_k: int = setting()
        engine: str = setting()
        max_batch: int = setting()
        batch_window_ms: float = setting()
        max_queue: int = setting()


def run_serve(args: argparse.Namespace) -> int:
    try:  # optional dependencies: the rest of the CLI works without them
        import uvicorn

        from ..serve.app import create_app
    except ImportError:
        raise ResnetlabError(NEEDS) from None
    if not (find_spec("python_multipart") or find_spec("multipart")):
        raise ResnetlabError(NEEDS)
    settings = settings_from_args(ServeSettings, args)
    device = device_name(settings.device)
    sock = listen(settings.host, settings.port)
    try:
        served = load_served(settings.source, settings.pretrained, device, top_k=settings.top_k,
                             engine=settings.engine)  # fmt: skip
        batching = BatchingSettings(**{f.name: getattr(settings, f.name)
                                       for f in dataclasses.fields(BatchingSettings)})  # fmt: skip
        app = create_app(served, max_upload_mb=settings.max_upload_mb, batching=batching)
        config = uvicorn.Config(app, host=settings.host, port=settings.port,
                                log_level=settings.log_level)  # fmt: skip
        server = uvicorn.Server(config)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]  # the one the system chose for --port 0
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"serving {served.name} on http://{host}:{port}/ with {served.engine_name} "
          "(Ctrl-C stops)", flush=True)  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):  # re-raised by uvicorn after a clean stop
        server.run(sockets=[sock])  # closes the socket when it stops
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, as uvicorn would bind it; a port in use, one that
    needs privileges or an address this machine does not have is one line naming the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ResnetlabError(
                f"port {port} on {host} is in use (another server, or a `resnetlab serve` still "
                "running); stop it or pick a free port with --port."
            ) from None
        if exc.errno == errno.EACCES:
            raise ResnetlabError(
                f"port {port} on {host} needs privileges to listen on; pick a port above 1023 "
                "with --port."
            ) from None
        raise ResnetlabError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); use --host 127.0.0.1 (this "
            "machine only) or 0.0.0.0 (every address)."
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="a local web page and JSON API for a model")
    add_settings(p, ServeSettings, positional={"source": "RUN_OR_MODEL"}, eager=True)
    p.set_defaults(func=run_serve)
