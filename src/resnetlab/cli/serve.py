"""``resnetlab serve RUN_OR_MODEL``: a local web page and ``POST /predict`` JSON API for one
model: top-k classes, the decision at the run's threshold, and the Grad-CAM overlay.

The address is taken first, before the model is loaded: a port in use is one line, at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
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
    sock = listen(args.host, args.port)
    try:
        served = load_served(args.source, args.pretrained, args.device, top_k=args.top_k)
        app = create_app(served, max_upload_mb=args.max_upload_mb)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
        server = uvicorn.Server(config)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]  # the one the system chose for --port 0
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {served.name} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
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
