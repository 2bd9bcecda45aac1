"""``resnetlab serve RUN_OR_MODEL``: a local web page and ``POST /predict`` JSON API for one
model: top-k classes, the decision at the run's threshold, and the Grad-CAM overlay.
"""

from __future__ import annotations

import argparse
from importlib.util import find_spec

from ..errors import ResnetlabError
from ..serve import load_served
from ..settings import bounded
from ..train.distributed import check_device

NEEDS = "`resnetlab serve` needs fastapi, uvicorn and python-multipart: install resnetlab[serve]"


def run_serve(args: argparse.Namespace) -> int:
    try:  # optional dependencies: the rest of the CLI works without them
        import uvicorn

        from ..serve.app import create_app
    except ImportError:
        raise ResnetlabError(NEEDS) from None
    if not (find_spec("python_multipart") or find_spec("multipart")):
        raise ResnetlabError(NEEDS)
    check_device(args.device)
    served = load_served(args.source, args.pretrained, args.device, top_k=args.top_k)
    app = create_app(served, max_upload_mb=args.max_upload_mb)
    print(f"serving {served.name} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="a local web page and JSON API for a model")
    p.add_argument(
        "source", metavar="RUN_OR_MODEL",
        help="fine-tuning run folder, `resnetlab train` run folder, or a model name",
    )  # fmt: skip
    p.add_argument("--pretrained", help="weights tag or file for a model name, e.g. imagenet")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=bounded(int, ">= 0"), default=8000, metavar="INT",
                   help="port (default 8000)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=bounded(float, "> 0"), default=20.0, metavar="MB",
                   help="largest upload accepted, in MiB (default 20)")  # fmt: skip
    p.add_argument("--top-k", type=bounded(int, ">= 1"), default=3, metavar="INT",
                   help="classes shown per image (default 3)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"))  # fmt: skip
    p.set_defaults(func=run_serve)
