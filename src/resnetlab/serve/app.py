"""The web app of ``resnetlab serve``: one HTML page and a JSON API over a ``ServedModel``.

Routes: ``GET /`` the page, ``GET /info`` the model, ``POST /predict`` an image as the raw
body or as a multipart upload (field ``file``); ``?top_k=K`` and ``?gradcam=1``. Requests that
arrive together run as one batch (``batcher.py``); when its queue is full a request is refused
at once with 503 and ``Retry-After``. Uploads
above the limit are refused by their Content-Length and, without one, while being read (413);
what is not a readable image is a 400 with the reason. Errors are ``{"error": message}``.
A client that closes the connection mid-upload is one warning line in the server's log; one
whose upload stalls (no bytes for ``upload_idle_s``) is answered 408, so no request holds the
server for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Message

from ..data.folder import BAD_ERRORS, BadImage
from ..errors import ResnetlabError
from .batcher import Batcher, BatchingSettings, Busy
from .model import ServedModel

PAGE = files(__package__).joinpath("page.html")
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: its format and --log-level


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UploadCut(Exception):
    """The client closed the connection before its upload was complete."""

    def __init__(self, received: int, declared: str | None) -> None:
        super().__init__(f"after {received} of {declared or 'an undeclared number of'} bytes")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}``; for an upload left unread (408, 413, 503) the connection is
    closed after it, as the rest of that body will not be read."""
    close = {"connection": "close"} if status in (408, 413, 503) else {}
    return JSONResponse({"error": message}, status_code=status, headers=close | (headers or {}))


async def read_body(request: Request, limit: int, idle_s: float) -> bytes:
    """The request body, refused (413) as soon as it is known to be over ``limit`` bytes, and
    (408) when no byte of it arrives for ``idle_s`` seconds."""
    too_large = RequestError(
        413, f"upload over the limit of {limit / 2**20:g} MiB; send a smaller image or start "
        "the server with a larger --max-upload-mb"
    )  # fmt: skip
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, "Content-Length is not a number")
        if int(length) > limit:
            raise too_large
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_s) as idle:
            async for chunk in request.stream():
                idle.reschedule(loop.time() + idle_s)
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except ClientDisconnect:
        raise UploadCut(size, length) from None
    except TimeoutError:
        raise RequestError(
            408, f"upload stalled: no data for {idle_s:g} s after {size} bytes; send it again"
        ) from None
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int, idle_s: float) -> bytes:
    """The image of a raw-body or multipart (field ``file``) request."""
    body = await read_body(request, limit, idle_s)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        sent = False

        async def replay() -> Message:  # the body already read, for the form parser
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except Exception as exc:  # the multipart parser's errors vary by version
            raise RequestError(400, f"unreadable multipart upload ({exc})") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError(400, "a multipart upload needs the image in a field named 'file'")
        body = await upload.read()
        await form.close()
    if not body:
        raise RequestError(400, "empty request; send an image (JPEG, PNG, ...) as the body")
    return body


def create_app(
    served: ServedModel,
    max_upload_mb: float = 20,
    upload_idle_s: float = 30,
    batching: BatchingSettings | None = None,
) -> FastAPI:
    """The app serving ``served``; uploads are limited to ``max_upload_mb`` MiB, and one that
    stalls for ``upload_idle_s`` seconds is refused; ``batching`` says how requests are
    batched (``app.state.batcher`` counts the batches by size)."""
    limit = int(max_upload_mb * 2**20)
    batcher = Batcher(served.forward, batching)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(title="resnetlab serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    page = PAGE.read_text(encoding="utf-8")

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error(400, f"bad query parameter ({where})")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/info")
    async def info() -> dict:
        batches = {str(size): n for size, n in sorted(batcher.sizes.items())}
        return served.info() | {"max_upload_mb": max_upload_mb,
                                "batching": vars(batcher.settings), "batches": batches}  # fmt: skip

    @app.post("/predict")
    async def predict(request: Request, top_k: int | None = None, gradcam: bool = False):
        if top_k is not None and top_k < 1:
            return error(400, "top_k must be at least 1")
        try:
            with batcher.slot() as slot:  # Busy (503) before the body is read
                data = await image_bytes(request, limit, upload_idle_s)
                if slot.alone:  # decoded and run in one call: one thread hop
                    raw, x, probs = await slot.call(served.infer, data)
                else:
                    raw, x = await run_in_threadpool(served.prepare, data)
                    probs = await slot.run(x)
            if not gradcam:
                return served.answer(probs, top_k, raw[0], None)
            cam = await run_in_threadpool(served.gradcam, x, int(probs[0].argmax()))
            return await run_in_threadpool(served.answer, probs, top_k, raw[0], cam)
        except Busy as exc:
            return error(503, str(exc), {"retry-after": str(exc.retry_after)})
        except UploadCut as exc:  # nobody to answer; the status is for the access log
            client = f"{request.client.host}:{request.client.port}" if request.client else "?"
            LOG.warning("%s closed the connection during its upload (%s); request dropped",
                        client, exc)  # fmt: skip
            return error(400, f"upload cut short {exc}")
        except RequestError as exc:
            return error(exc.status, str(exc))
        except ResnetlabError as exc:
            return error(400, str(exc))
        except BAD_ERRORS as exc:
            why = str(exc) if isinstance(exc, BadImage) else type(exc).__name__
            return error(400, f"not a readable image ({why}); send a JPEG, PNG, BMP or TIFF")

    return app
