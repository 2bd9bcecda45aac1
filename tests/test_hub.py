"""Downloads and the cache, against a local HTTP server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import pytest
import torch

from resnetlab import create_model
from resnetlab import download as download_module
from resnetlab.errors import ResnetlabError
from resnetlab.weights import catalog, hub


class Server:
    """Serves ``files`` under several behaviours chosen by the first path segment:

    ``/ok/NAME`` the file; ``/cut/NAME`` announces the full length, sends half, closes;
    ``/flaky/NAME`` cuts the first request, honours ``Range`` afterwards; ``/bad/NAME``
    other bytes than the name's hash promises; ``/stall/NAME`` headers, then nothing;
    ``/nolen/NAME`` no Content-Length, half the file, close; ``/nolenfull/NAME`` no
    Content-Length, the whole file; ``/v1/NAME``, ``/v2/NAME`` the file ``files["v1/NAME"]``;
    anything else 404.
    """

    MODES = ("ok", "cut", "flaky", "bad", "stall", "nolen", "nolenfull", "v1", "v2")

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()  # ends stalled responses
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                _, mode, name = self.path.split("/", 2)
                data = server.files.get(f"{mode}/{name}" if mode in ("v1", "v2") else name)
                if data is None or mode not in server.MODES:
                    self.send_error(404)
                    return
                if mode == "bad":
                    data = b"x" + data[1:]
                if mode == "stall":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.flush()
                    server.release.wait(10)
                    return
                if mode.startswith("nolen"):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(data if mode == "nolenfull" else data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                first_try = sum(p == self.path for p, _ in server.requests) == 1
                if mode == "cut" or (mode == "flaky" and first_try):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                start = 0
                if self.headers.get("Range") and mode == "flaky":
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, mode: str, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{mode}/{name}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def cache_dirs(tmp_path, monkeypatch):
    """Point both caches at the test's folder and make retries immediate."""
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(download_module, "RETRY_WAIT_S", 0.0)
    return tmp_path


@pytest.fixture(scope="module")
def checkpoint() -> tuple[str, bytes, torch.nn.Module]:
    """A real resnet20 state dict, named ``resnet20-<sha8>.pth`` after its own SHA-256."""
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    return f"resnet20-{hashlib.sha256(data).hexdigest()[:8]}.pth", data, model


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_listing() -> list[str]:
    folder = hub.weights_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cache_folders_follow_the_environment():
    assert hub.weights_dir().parts[-2:] == ("home", "weights")
    assert hub.torch_cache_dir().parts[-3:] == ("torch", "hub", "checkpoints")


def test_download_shows_progress_then_hits_the_cache(server, checkpoint, capsys):
    name, data, _ = checkpoint
    server.files[name] = data
    path = hub.fetch(server.url("ok", name))
    assert path == hub.weights_dir() / name
    assert path.read_bytes() == data
    err = capsys.readouterr().err
    assert name in err and "100%" in err and "B/s" in err
    assert len(server.requests) == 1
    assert hub.fetch(server.url("ok", name)) == path
    assert len(server.requests) == 1, "second call must come from the cache"
    assert cache_listing() == [name]


def test_create_model_from_http_url_loads_the_weights(server, checkpoint):
    name, data, source = checkpoint
    server.files[name] = data
    model = create_model("resnet20", pretrained=server.url("ok", name)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert model.pretrained_cfg["url"] == server.url("ok", name)


def test_named_tag_downloads_from_the_catalog_url(server, checkpoint, monkeypatch):
    name, data, source = checkpoint
    server.files[name] = data
    entry = catalog._entry("resnet20", 1, name[9:17], 269722, 1.0, 2.0, 1.0, True)
    monkeypatch.setattr(catalog, "CATALOG", (entry,))
    monkeypatch.setattr(catalog, "URL_ROOT", server.url("ok", ""))
    model = create_model("resnet20", pretrained=True)
    assert model.pretrained_cfg["tag"] == "imagenet-v1"
    assert model.pretrained_cfg["published"]["source"] == catalog.SOURCE
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_sha256_mismatch_is_refused_and_nothing_is_cached(server, checkpoint):
    name, data, _ = checkpoint
    server.files[name] = data
    with pytest.raises(ResnetlabError, match="SHA-256") as err:
        hub.fetch(server.url("bad", name))
    assert name[9:17] in str(err.value) and "\n" not in str(err.value)
    assert cache_listing() == []


def test_connection_cut_half_way_retries_then_fails_leaving_nothing(server, checkpoint):
    name, data, _ = checkpoint
    server.files[name] = data
    with pytest.raises(ResnetlabError, match="cannot download") as err:
        hub.fetch(server.url("cut", name))
    assert server.url("cut", name) in str(err.value)
    assert len(server.requests) == download_module.RETRIES + 1
    assert cache_listing() == [], "no partial or temporary file may remain"


def test_broken_download_resumes_with_a_range_request(server, checkpoint):
    name, data, _ = checkpoint
    server.files[name] = data
    path = hub.fetch(server.url("flaky", name), progress=False)
    assert path.read_bytes() == data
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(data) // 2}-"
    assert cache_listing() == [name]


def test_interrupted_download_is_kept_and_resumed(server, checkpoint, monkeypatch):
    name, data, _ = checkpoint
    server.files[name] = data

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(download_module.time, "sleep", interrupt)  # Ctrl-C while waiting to retry
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(server.url("flaky", name), progress=False)
    partial = download_module.partial_file(hub.weights_dir() / name)
    assert cache_listing() == [partial.name]
    assert partial.stat().st_size == len(data) // 2
    monkeypatch.setattr(download_module.time, "sleep", lambda seconds: None)
    assert hub.fetch(server.url("flaky", name), progress=False).read_bytes() == data
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"
    assert cache_listing() == [name]


def test_http_404_is_one_clear_line(server):
    url = server.url("ok", "resnet20-00000000.pth")
    with pytest.raises(ResnetlabError, match="HTTP 404") as err:
        hub.fetch(url)
    assert url in str(err.value) and "\n" not in str(err.value)
    assert len(server.requests) == 1, "a 404 is not retried"
    assert cache_listing() == []


def test_no_network_error_names_the_url_and_where_to_put_the_file():
    url = f"http://127.0.0.1:{closed_port()}/models/resnet20-0badf00d.pth"
    with pytest.raises(ResnetlabError) as err:
        hub.fetch(url)
    message = str(err.value)
    assert url in message
    assert str(hub.weights_dir() / "resnet20-0badf00d.pth") in message
    assert cache_listing() == []


def test_prefilled_caches_work_without_network(checkpoint):
    name, data, _ = checkpoint
    url = f"http://127.0.0.1:{closed_port()}/models/{name}"
    torch_copy = hub.torch_cache_dir() / name
    torch_copy.parent.mkdir(parents=True)
    torch_copy.write_bytes(data)
    assert hub.fetch(url) == torch_copy  # torchvision's cache is reused
    own_copy = hub.weights_dir() / name
    own_copy.parent.mkdir(parents=True)
    own_copy.write_bytes(data)
    assert hub.fetch(url) == own_copy  # resnetlab's own cache comes first


def test_corrupt_cached_file_is_not_used(checkpoint):
    name, data, _ = checkpoint
    own_copy = hub.weights_dir() / name
    own_copy.parent.mkdir(parents=True)
    own_copy.write_bytes(data[:-10])
    assert hub.cached_file(f"http://example.invalid/{name}") is None


def test_file_url_needs_no_network_and_is_verified(tmp_path, checkpoint):
    name, data, source = checkpoint
    good = tmp_path / name
    good.write_bytes(data)
    assert hub.fetch(good.as_uri()) == good
    model = create_model("resnet20", pretrained=good.as_uri())
    assert torch.equal(model.fc.weight, source.fc.weight)
    bad = tmp_path / "resnet20-0badf00d.pth"
    bad.write_bytes(data)
    with pytest.raises(ResnetlabError, match="SHA-256"):
        hub.fetch(bad.as_uri())
    with pytest.raises(ResnetlabError, match="no such file"):
        hub.fetch((tmp_path / "missing.pth").as_uri())
    assert not Path(hub.weights_dir()).exists()


def test_cli_download_then_list_shows_the_cached_path(server, checkpoint, monkeypatch, capsys):
    from resnetlab.cli import main

    name, data, _ = checkpoint
    server.files[name] = data
    entry = catalog._entry("resnet20", 1, name[9:17], 269722, 1.0, 2.0, round(len(data) / 2**20, 3))
    monkeypatch.setattr(catalog, "CATALOG", (entry,))
    monkeypatch.setattr(catalog, "URL_ROOT", server.url("ok", ""))
    assert main(["weights", "resnet20"]) == 0
    assert str(hub.weights_dir()) not in capsys.readouterr().out.split("\n\n")[0]
    assert main(["weights", "resnet20", "--download", "--tag", "imagenet-v1"]) == 0
    path = hub.weights_dir() / name
    assert str(path) in capsys.readouterr().out and path.read_bytes() == data
    assert main(["weights", "resnet20"]) == 0
    assert str(path) in capsys.readouterr().out.split("\n\n")[0]
    assert main(["weights", "resnet20", "--download", "--tag", "imagenet-v2"]) == 2
    assert "imagenet-v1" in capsys.readouterr().err


# --- time-outs, short reads, and a cache keyed by URL -------------------------------------------


def test_stalled_server_fails_after_the_configured_timeout(server, checkpoint, monkeypatch):
    name, data, _ = checkpoint
    server.files[name] = data
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_RETRIES", "0")
    with pytest.raises(ResnetlabError) as err:
        hub.fetch(server.url("stall", name), progress=False)
    message = str(err.value)
    assert "no data for 0.5 s from 127.0.0.1" in message
    assert "RESNETLAB_DOWNLOAD_TIMEOUT" in message and "\n" not in message
    assert len(server.requests) == 1, "RESNETLAB_DOWNLOAD_RETRIES=0 means a single try"
    assert cache_listing() == []


def test_timeout_and_retries_are_keyword_arguments(server, checkpoint, tmp_path):
    name, data, _ = checkpoint
    server.files[name] = data
    with pytest.raises(ResnetlabError, match="no data for 0.3 s"):
        download_module.download(server.url("stall", name), tmp_path / name, progress=False,
                                 timeout=0.3, retries=1)  # fmt: skip
    assert len(server.requests) == 2
    assert not (tmp_path / name).exists()
    assert not download_module.partial_file(tmp_path / name).exists()


def test_bad_timeout_settings_are_one_line_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ResnetlabError, match="RESNETLAB_DOWNLOAD_TIMEOUT='soon'"):
        download_module.download("http://127.0.0.1:9/x.pth", tmp_path / "x.pth")
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_RETRIES", "-1")
    with pytest.raises(ResnetlabError, match="RESNETLAB_DOWNLOAD_RETRIES='-1'"):
        download_module.download("http://127.0.0.1:9/x.pth", tmp_path / "x.pth")


def test_short_body_without_hash_in_the_name_is_never_cached(server, checkpoint):
    _, data, _ = checkpoint
    server.files["resnet20.pth"] = data
    with pytest.raises(ResnetlabError, match="connection closed after"):
        hub.fetch(server.url("cut", "resnet20.pth"), progress=False)
    assert not [p for p in hub.weights_dir().rglob("*") if p.is_file()], "no partial file kept"
    assert hub.cached_file(server.url("cut", "resnet20.pth")) is None


def test_no_content_length_and_early_close_is_refused_then_a_full_copy_is_taken(server, checkpoint):
    _, data, source = checkpoint
    server.files["resnet20.pth"] = data
    url = server.url("nolen", "resnet20.pth")
    with pytest.raises(ResnetlabError, match="incomplete or not a weights file") as err:
        hub.fetch(url, progress=False)
    assert url in str(err.value) and "\n" not in str(err.value)
    assert hub.cached_file(url) is None
    assert not [p for p in hub.weights_dir().rglob("*") if p.is_file()]
    with pytest.raises(ResnetlabError, match="incomplete"):  # a later run downloads again
        hub.fetch(url, progress=False)
    assert len(server.requests) == 2
    full = server.url("nolenfull", "resnet20.pth")
    model = create_model("resnet20", pretrained=full)
    assert torch.equal(model.fc.weight, source.fc.weight)
    assert hub.cached_file(full) == hub.cache_path(full)


@pytest.mark.parametrize("suffix", [".th", ".safetensors"])
def test_complete_legacy_and_safetensors_files_pass_the_check(tmp_path, checkpoint, suffix):
    from resnetlab.weights import check_weights_file, save_weights
    from resnetlab.weights.io import CorruptFileError

    _, _, source = checkpoint
    path = tmp_path / f"w{suffix}"
    if suffix == ".th":  # the pre-1.6 format of the peer CIFAR files
        torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    else:
        save_weights(source, path)
    check_weights_file(path, path.name)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        check_weights_file(path, path.name)


def test_two_urls_with_the_same_file_name_get_two_cache_entries(server, checkpoint):
    _, data, source = checkpoint
    torch.manual_seed(1)
    other = create_model("resnet20")
    buffer = io.BytesIO()
    torch.save(other.state_dict(), buffer)
    server.files["v1/resnet20.th"] = data
    server.files["v2/resnet20.th"] = buffer.getvalue()
    first = create_model("resnet20", pretrained=server.url("v1", "resnet20.th"))
    second = create_model("resnet20", pretrained=server.url("v2", "resnet20.th"))
    assert torch.equal(first.fc.weight, source.fc.weight)
    assert torch.equal(second.fc.weight, other.fc.weight)
    assert not torch.equal(first.fc.weight, second.fc.weight)
    paths = {hub.cached_file(server.url(v, "resnet20.th")) for v in ("v1", "v2")}
    assert len(paths) == 2 and {p.name for p in paths} == {"resnet20.th"}
    assert create_model("resnet20", pretrained=server.url("v2", "resnet20.th")) is not None
    assert len(server.requests) == 2, "each URL is downloaded once, then served from its cache"


def test_torch_cache_is_not_used_for_names_without_a_hash(checkpoint):
    _, data, _ = checkpoint
    url = f"http://127.0.0.1:{closed_port()}/v9/resnet20.th"
    stale = hub.torch_cache_dir() / "resnet20.th"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(data)
    assert hub.cached_file(url) is None


def test_cached_file_that_does_not_load_is_moved_aside_and_fetched_again(
    server, checkpoint, caplog
):
    _, data, source = checkpoint
    server.files["resnet20.pth"] = data
    url = server.url("ok", "resnet20.pth")
    hub.fetch(url, progress=False)
    cached = hub.cache_path(url)
    cached.write_bytes(data[: len(data) // 3])  # damaged after it entered the cache
    model = create_model("resnet20", pretrained=url)
    assert torch.equal(model.fc.weight, source.fc.weight)
    assert cached.read_bytes() == data
    aside = cached.with_name(cached.name + ".corrupt")
    assert aside.stat().st_size == len(data) // 3
    assert str(cached) in caplog.text and str(aside) in caplog.text
    assert len(server.requests) == 2


def test_imagenet_style_named_weights_come_from_the_mirror(checkpoint, tmp_path, monkeypatch):
    name, data, source = checkpoint
    entry = catalog._entry("resnet20", 1, name[9:17], 269722, 1.0, 2.0, 1.0, True)
    monkeypatch.setattr(catalog, "CATALOG", (entry,))
    monkeypatch.setattr(catalog, "URL_ROOT", f"http://127.0.0.1:{closed_port()}/models/")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(data)
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    model = create_model("resnet20", pretrained="imagenet-v1")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.pretrained_cfg["url"] == entry.url
    (mirror / name).write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ResnetlabError, match="wrong or damaged"):
        create_model("resnet20", pretrained="imagenet-v1")
    monkeypatch.delenv(hub.MIRROR_ENV)
    with pytest.raises(ResnetlabError, match=hub.MIRROR_ENV):
        create_model("resnet20", pretrained="imagenet-v1")
