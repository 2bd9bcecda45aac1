"""``resnetlab serve`` against clients that cut or are refused, and a port already taken: one
log line or one error line, never a traceback, and the server keeps serving. ``explain`` with
two images of one name, and a layer that has no map."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

import resnetlab.cli.serve as serve_cli
from resnetlab.cli import main
from resnetlab.cli.explain import output_stems
from resnetlab.serve import load_served
from resnetlab.serve.app import create_app
from test_serve import Server, fine_tune_like_run, free_port, picture


class Records(logging.Handler):
    """Keeps what the server logs (uvicorn's ``uvicorn.error`` log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return fine_tune_like_run(tmp_path_factory.mktemp("hostile") / "run")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return picture(tmp_path_factory.mktemp("image") / "a.png", 0).read_bytes()


def send_and_close(port: int, head: bytes, body: bytes) -> None:
    """A raw client: the request head, part of a body, then the connection closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(head + body)


def cut_requests(port: int) -> int:
    """Uploads cut short (declared or chunked), and refused ones cut too; how many were cut."""
    declared = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    multipart = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")  # fmt: skip
    over = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    for _ in range(3):
        send_and_close(port, declared, bytes(1000))
    send_and_close(port, chunked, b"3e8\r\n" + bytes(1000) + b"\r\n")
    send_and_close(port, multipart, b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n")
    send_and_close(port, over, bytes(1000))  # refused by its Content-Length: nothing to log
    send_and_close(port, declared, b"")  # only the head
    return 6


def test_a_cut_upload_is_one_log_line_and_the_server_keeps_serving(run, image) -> None:
    live = Server(create_app(load_served(str(run)), max_upload_mb=1))
    log = Records()
    logging.getLogger("uvicorn.error").addHandler(log)  # after uvicorn configured its logging
    try:
        with live:
            expected = httpx.post(f"{live.url}/predict", content=image, timeout=30).json()
            cut = cut_requests(live.port)
            deadline = time.monotonic() + 20
            while len(log.records) < cut and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # anything logged late
            got = httpx.post(f"{live.url}/predict", content=image, timeout=30)
            assert got.status_code == 200 and got.json()["classes"] == expected["classes"]
            state = live.server.server_state
            deadline = time.monotonic() + 10
            while (state.connections or state.tasks) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not state.connections and not state.tasks  # nothing left hanging
    finally:
        logging.getLogger("uvicorn.error").removeHandler(log)
    messages = [r.getMessage() for r in log.records]
    assert not [r for r in log.records if r.exc_info], messages  # no traceback
    assert not any("Exception in ASGI" in m for m in messages), messages
    lines = [m for m in messages if "closed the connection during its upload" in m]
    assert len(lines) == cut and all("\n" not in m for m in lines), messages
    assert "after 1000 of 200000 bytes" in lines[0]
    assert len(messages) == cut, messages  # one line per cut upload, nothing else


def test_a_stalled_upload_is_refused_and_holds_nothing(run, image) -> None:
    live = Server(create_app(load_served(str(run)), max_upload_mb=1, upload_idle_s=0.5))
    with live, socket.create_connection(("127.0.0.1", live.port), timeout=10) as client:
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
                       + bytes(1000))  # fmt: skip
        started = time.monotonic()
        ok = httpx.post(f"{live.url}/predict", content=image, timeout=30)  # meanwhile served
        assert ok.status_code == 200
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = client.recv(65536)
            if not part:
                break
            answer += part
        assert time.monotonic() - started < 10
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"no data for 0.5 s after 1000 bytes" in answer
        state = live.server.server_state
        deadline = time.monotonic() + 3  # before uvicorn's keep-alive of 5 s would close it
        while (state.connections or state.tasks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not state.connections and not state.tasks  # the server closed its end


def test_a_port_in_use_is_one_line_before_the_model_is_loaded(run, capsys, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(serve_cli, "load_served", never)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out and "Traceback" not in err
    line = err.strip()
    assert "\n" not in line and f"port {port} on 127.0.0.1 is in use" in line and "--port" in line
    assert main(["serve", str(run), "--host", "no-such-host.invalid"]) == 2
    assert "cannot listen on no-such-host.invalid" in capsys.readouterr().err


def test_serve_answers_on_the_port_it_checked(run, image, monkeypatch) -> None:
    servers: list[uvicorn.Server] = []

    class Kept(uvicorn.Server):
        def __init__(self, config) -> None:
            super().__init__(config)
            servers.append(self)

    monkeypatch.setattr(uvicorn, "Server", Kept)
    port = free_port()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(main(["serve", str(run), "--port", str(port)])), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not (servers and servers[0].started):
        assert time.monotonic() < deadline and thread.is_alive(), "serve did not start"
        time.sleep(0.05)
    try:
        got = httpx.post(f"http://127.0.0.1:{port}/predict", content=image, timeout=30)
        assert got.status_code == 200 and got.json()["model"] == "resnet18 (run)"
    finally:
        servers[0].should_exit = True
        thread.join(20)
    assert codes == [0]
    with socket.create_server(("127.0.0.1", port)):  # released when the server stopped
        pass


def test_two_images_of_one_name_get_their_own_maps(run, tmp_path, capsys) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first, second = picture(tmp_path / "a" / "x.jpg", 1), picture(tmp_path / "b" / "x.jpg", 2)
    out = tmp_path / "maps"
    assert main(["explain", str(run), str(first), str(second), "--out", str(out),
                 "--method", "gradcam"]) == 0  # fmt: skip
    records = json.loads((out / "explain.json").read_text())["images"]
    files = [r["gradcam"]["npy"] for r in records]
    assert [r["image"] for r in records] == [str(first), str(second)]
    assert len(set(files)) == 2 and all((out / f).is_file() for f in files)
    alone = tmp_path / "alone"  # the first image's map, not overwritten by the second's
    assert main(["explain", str(run), str(first), "--out", str(alone), "--method", "gradcam"]) == 0
    np.testing.assert_array_equal(np.load(out / files[0]), np.load(alone / "x_gradcam.npy"))
    assert not np.array_equal(np.load(out / files[0]), np.load(out / files[1]))


def test_output_stems_are_distinct_and_deterministic() -> None:
    cases = [
        ["a/x.jpg", "b/x.jpg", "c.png"],
        ["/data/a/x.jpg", "/data/a/x.png", "/data/a/X.jpg"],  # one folder; case aside
        ["imgs/b_x.jpg", "imgs/a/x.jpg", "imgs/b/x.jpg"],  # a made-up name already taken
        ["x.jpg", "x.jpg"],
    ]
    for case in cases:
        paths = [Path(p) for p in case]
        names = output_stems(paths)
        assert len({n.casefold() for n in names}) == len(paths), names
        assert all("/" not in n and n for n in names) and output_stems(paths) == names
    assert output_stems([Path("a/x.jpg"), Path("b/x.jpg"), Path("c.png")]) == ["a_x", "b_x", "c"]
    assert output_stems([Path("only/one.jpg")]) == ["one"]  # unique names are kept


def test_explain_on_a_layer_without_a_map_names_those_with_one(run, image, tmp_path,
                                                                capsys) -> None:  # fmt: skip
    path = tmp_path / "a.png"
    path.write_bytes(image)
    argv = ["explain", str(run), str(path), "--out", str(tmp_path / "m"), "--layer", "fc"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "--layer 'fc' gives no spatial map" in err and "layer4.1" in err
