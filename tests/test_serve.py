"""``resnetlab serve`` end to end: a real server on 127.0.0.1, a headless Chromium on its page,
and the JSON API over HTTP, against ``resnetlab predict`` on the same images."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx  # the dev extra brings httpx, playwright and the serve extra's packages
import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from resnetlab import create_model
from resnetlab.card import build_from_card, write_card
from resnetlab.cli import main
from resnetlab.data.preprocess import Preprocessing, normalise, prepare_images
from resnetlab.serve import load_served
from resnetlab.serve.app import create_app
from resnetlab.weights import save_weights

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CLASSES = ["benign", "malignant"]


def fine_tune_like_run(folder: Path, threshold: float = 0.4, temperature: float = 1.7) -> Path:
    """A run folder as ``resnetlab finetune`` leaves it (weights + card with a temperature and
    an operating point), of a resnet18 with random weights at 64 px: no training needed."""
    torch.manual_seed(0)
    prep = Preprocessing(64, 72, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    card = {
        "model": {"name": "resnet18", "in_channels": 3, "options": {}, "num_classes": 2,
                  "head_dropout": 0.0},
        "classes": CLASSES,
        "preprocessing": prep.to_dict(),
        "calibration": {"temperature": temperature, "fitted_on": "val"},
        "operating_point": {"rule": "fixed", "threshold": threshold,
                            "positive_class": CLASSES[1]},
    }  # fmt: skip
    model = build_from_card(card)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True)
    save_weights(model, folder / "model.safetensors", metadata={"model": "resnet18"})
    write_card(folder, card)
    return folder


def picture(path: Path, seed: int, size: tuple[int, int] = (96, 80)) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    pixels[:, : size[0] // 2] //= 3  # some structure for Grad-CAM to find
    Image.fromarray(pixels).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread on a free 127.0.0.1 port; ``stop`` sets should_exit."""

    def __init__(self, app) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return fine_tune_like_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [picture(folder / f"{i}.{'png' if i % 2 else 'jpg'}", i) for i in range(3)]


@pytest.fixture(scope="module")
def server(run):
    with Server(create_app(load_served(str(run)), max_upload_mb=1)) as live:
        yield live


def predict_cli(run: Path, image: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--json", "--top-k", "2"]) == 0
    return json.loads(capsys.readouterr().out)[0]


def test_raw_body_and_multipart_agree_with_predict(server, run, images, capsys) -> None:
    for image in images:
        expected = predict_cli(run, image, capsys)
        data = image.read_bytes()
        raw = httpx.post(f"{server.url}/predict?top_k=2", content=data, timeout=30)
        form = httpx.post(f"{server.url}/predict", files={"file": (image.name, data)},
                          params={"top_k": 2}, timeout=30)  # fmt: skip
        for response in (raw, form):
            assert response.status_code == 200, response.text
            got = response.json()
            assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
            for mine, theirs in zip(got["top"], expected["top"], strict=True):
                assert abs(mine["probability"] - theirs["probability"]) <= 1e-5
            assert abs(got["probability"] - expected["probability"]) <= 1e-5
            assert got["decision"] == expected["decision"]
            assert got["threshold"] == pytest.approx(0.4) == expected["threshold"]
            assert sum(c["probability"] for c in got["classes"]) == pytest.approx(1, abs=1e-6)
            assert "gradcam" not in got and got["model"] == "resnet18 (run)"


def test_probabilities_are_the_calibrated_softmax_of_the_model(server, run, images) -> None:
    loaded = load_served(str(run))
    raw = torch.from_numpy(np.array(Image.open(images[1]).convert("RGB"))).permute(2, 0, 1)
    x = normalise(prepare_images(raw[None], loaded.preprocessing), loaded.preprocessing)
    with torch.no_grad():
        reference = torch.softmax(loaded.model(x) / 1.7, 1)[0]  # the unfolded model
    got = httpx.post(f"{server.url}/predict", content=images[1].read_bytes(), timeout=30).json()
    probs = torch.tensor([c["probability"] for c in got["classes"]])
    assert (probs - reference).abs().max() <= 1e-5
    decision = CLASSES[1] if reference[1] >= 0.4 else CLASSES[0]
    assert got["decision"] == decision


def test_gradcam_on_request_is_a_png_of_the_input_size(server, images) -> None:
    got = httpx.post(f"{server.url}/predict?gradcam=1", content=images[0].read_bytes(),
                     timeout=30).json()  # fmt: skip
    prefix = "data:image/png;base64,"
    assert got["gradcam"].startswith(prefix) and got["gradcam_layer"] == "layer4.1"
    overlay = Image.open(io.BytesIO(base64.b64decode(got["gradcam"][len(prefix):])))
    assert overlay.format == "PNG" and overlay.size == (64, 64) and overlay.mode == "RGB"


def test_bad_requests_are_clear_json_errors_and_the_server_keeps_serving(
    server, images, tmp_path
) -> None:
    text = httpx.post(f"{server.url}/predict", content=b"just some text\n", timeout=30)
    assert text.status_code == 400 and "not a readable image" in text.json()["error"]
    png = images[1].read_bytes()
    truncated = httpx.post(f"{server.url}/predict", content=png[: len(png) // 2], timeout=30)
    assert truncated.status_code == 400 and "not a readable image" in truncated.json()["error"]
    empty = httpx.post(f"{server.url}/predict", content=b"", timeout=30)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    wrong_field = httpx.post(f"{server.url}/predict", files={"image": ("a.png", png)}, timeout=30)
    assert wrong_field.status_code == 400 and "'file'" in wrong_field.json()["error"]
    for query in ("top_k=0", "top_k=two"):
        bad = httpx.post(f"{server.url}/predict?{query}", content=png, timeout=30)
        assert bad.status_code == 400 and "top_k" in bad.json()["error"]
    big = bytes(2 * 2**20)  # the test server allows 1 MiB
    over = httpx.post(f"{server.url}/predict", content=big, timeout=30)
    assert over.status_code == 413 and "limit of 1 MiB" in over.json()["error"]
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    streamed = httpx.post(f"{server.url}/predict", content=chunks, timeout=30)
    assert streamed.status_code == 413
    over_form = httpx.post(f"{server.url}/predict", files={"file": ("a.png", big)}, timeout=30)
    assert over_form.status_code == 413
    ok = httpx.post(f"{server.url}/predict", content=png, timeout=30)
    assert ok.status_code == 200 and ok.json()["top"]


def test_fifty_concurrent_requests_get_the_same_answer(server, images) -> None:
    data = images[2].read_bytes()
    with httpx.Client(timeout=60) as client:
        expected = client.post(f"{server.url}/predict", content=data).json()

        def ask(_: int) -> dict:
            response = client.post(f"{server.url}/predict", content=data)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(ask, range(50)))
    assert all(a["classes"] == expected["classes"] for a in answers)
    assert all(a["decision"] == expected["decision"] for a in answers)


def test_a_train_run_folder_and_a_model_name_are_served(tmp_path, images) -> None:
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=3).eval()
    folder = tmp_path / "trainrun"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "resnet20", "model_options": {}}))
    norm = {"pixel_mean": None, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    torch.save({"model": model.state_dict(), "classes": ["a", "b", "c"], "preprocess": norm},
               folder / "best.pt")  # fmt: skip
    served = load_served(str(folder))
    assert served.classes == ["a", "b", "c"] and served.preprocessing.crop == 32
    image = Image.open(images[1]).convert("RGB")  # a PNG: decoded at full size
    got = served.predict(images[1].read_bytes(), top_k=3)
    prep = served.preprocessing
    raw = prepare_images(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None], prep)
    mean, std = torch.tensor(norm["mean"]).view(1, 3, 1, 1), torch.tensor(norm["std"])
    with torch.no_grad():
        ref = torch.softmax(model((raw / 255.0 - mean) / std.view(1, 3, 1, 1)), 1)[0]
    assert max(abs(c["probability"] - r) for c, r in zip(got["classes"], ref, strict=True)) < 1e-5
    assert got["threshold"] is None and got["decision"] == got["top"][0]["class"]

    named = load_served("resnet18")
    assert named.preprocessing.crop == 224 and len(named.classes) == 1000
    assert named.predict(images[0].read_bytes(), top_k=5)["top"][4]["probability"] > 0


def test_the_page_shows_what_the_api_returns(server, images, tmp_path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (the browser test must run in CI)")
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium to run the browser test")
    expected = httpx.post(f"{server.url}/predict", content=images[0].read_bytes(),
                          timeout=30).json()  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(server.url)
            page.wait_for_function("document.getElementById('model').textContent.includes('·')")
            page.set_input_files("#file", str(images[0]))
            page.wait_for_selector("#result:not(.hidden)")
            page.wait_for_function("document.getElementById('gradcam').complete && "
                                   "document.getElementById('gradcam').naturalWidth > 0")
            assert page.inner_text("#top-class") == expected["top"][0]["class"]
            shown = float(page.get_attribute("#top-probability", "data-value"))
            assert shown == pytest.approx(expected["top"][0]["probability"], abs=1e-7)
            assert page.inner_text("#top-probability") == f"{shown:.4f}"
            assert page.inner_text("#decision-class") == expected["decision"]
            assert page.eval_on_selector("#gradcam", "e => e.naturalWidth") == 64
            assert "resnet18 (run)" in page.inner_text("#model")
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] == 1100
            if os.environ.get("RESNETLAB_UPDATE_SCREENSHOT"):  # the picture in the docs
                (ROOT / "docs" / "serve.png").write_bytes(shot.read_bytes())
        finally:
            browser.close()


def test_serve_without_its_dependencies_says_what_to_install(monkeypatch, run, capsys) -> None:
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    assert main(["serve", str(run)]) == 2
    assert "install resnetlab[serve]" in capsys.readouterr().err


def test_an_image_above_the_pixel_limit_is_refused(server, images, monkeypatch) -> None:
    monkeypatch.setenv("RESNETLAB_MAX_IMAGE_MEGAPIXELS", "0.005")  # 96x80 is 0.0077
    refused = httpx.post(f"{server.url}/predict", content=images[1].read_bytes(), timeout=30)
    assert refused.status_code == 400 and "above the limit" in refused.json()["error"]
    monkeypatch.delenv("RESNETLAB_MAX_IMAGE_MEGAPIXELS")
    assert httpx.post(f"{server.url}/predict", content=images[1].read_bytes()).status_code == 200
