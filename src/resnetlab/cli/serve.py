"""``resnetlab serve RUN_OR_MODEL``: a local web page and ``POST /predict`` JSON API for one
model: top-k classes, the decision at the run's threshold, and the Grad-CAM overlay.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING

from ..errors import ResnetlabError
from ..groups import Checked, DeviceSettings, InferenceSettings, ModelSettings, device_name
from ..serve import load_served
from ..settings import REQUIRED, compose, setting
from .flags import add_settings, settings_from_args

NEEDS = "`resnetlab serve` needs fastapi, uvicorn and python-multipart: install resnetlab[serve]"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(kw_only=True)
@compose(InferenceSettings, ModelSettings, DeviceSettings,
         exclude=("tta", "model", "model_options"), defaults={"source": REQUIRED})  # fmt: skip
class ServeSettings(Checked):
    """``resnetlab serve``: where it listens; the model and device from the groups."""

    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(8000, "port", ">= 0")
    max_upload_mb: float = setting(20.0, "largest upload accepted, in MiB", "> 0")
    log_level: str = setting("warning", "uvicorn's log level", choices=LOG_LEVELS)

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        pretrained: str | None = setting()
        device: str = setting()
        top_k: int = setting()


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
    served = load_served(settings.source, settings.pretrained, device, top_k=settings.top_k)
    app = create_app(served, max_upload_mb=settings.max_upload_mb)
    host, port = settings.host, settings.port
    print(f"serving {served.name} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="a local web page and JSON API for a model")
    add_settings(p, ServeSettings, positional={"source": "RUN_OR_MODEL"}, eager=True)
    p.set_defaults(func=run_serve)
