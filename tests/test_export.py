"""Export to ONNX and TorchScript, checked against the eager model on another batch size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data.preprocess import Preprocessing, normalise, prepare_images
from resnetlab.errors import ResnetlabError
from resnetlab.export import SUFFIXES, Preprocessed, export_model
from resnetlab.weights import save_weights
from test_files import fill_disk


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=4)


def test_onnx_export_has_a_dynamic_batch_and_matches_eager(tmp_path, model):
    import onnxruntime

    model.train()
    report = export_model(model, tmp_path / "m.onnx", "onnx", torch.randn(2, 3, 32, 32))
    assert model.training, "the model's mode is restored"
    assert report.check_batch == 3 and report.max_abs_diff < 1e-4
    assert report.path.stat().st_size == report.size_bytes > 100_000
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_torchscript_export_matches_eager(tmp_path, model):
    report = export_model(model, tmp_path / "m.pt", "torchscript", torch.randn(1, 3, 32, 32))
    assert report.check_batch == 2 and report.max_abs_diff < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(report.path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)


def test_failed_check_writes_nothing(tmp_path, model):
    with pytest.raises(ResnetlabError, match="differs from eager"):
        export_model(
            model, tmp_path / "m.pt", "torchscript", torch.randn(1, 3, 32, 32), tolerance=-1
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ResnetlabError, match="unknown export format"):
        export_model(model, tmp_path / "m.tflite", "tflite", torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, model, monkeypatch, format):
    """torch.jit.save to a path on a full disk aborts the process; the export is built in
    memory and written by the one atomic writer instead."""
    path = tmp_path / f"m{SUFFIXES[format]}"
    path.write_bytes(b"the previous export")
    fill_disk(monkeypatch)
    with pytest.raises(ResnetlabError, match="no space left .* keeps its previous content"):
        export_model(model, path, format, torch.randn(1, 3, 32, 32))
    assert path.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cli_exports_a_checkpoint(tmp_path, model, capsys):
    checkpoint = save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and "max |diff|" in capsys.readouterr().out
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    assert main(["export", str(bare), "--format", "torchscript", "--out", str(out)]) == 2
    assert "--model" in capsys.readouterr().err


def test_cli_bad_pretrained_path_is_a_user_error(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    argv = ["export", "resnet20", "--pretrained", str(missing), "--format", "onnx"]
    assert main([*argv, "--out", str(tmp_path / "m.onnx")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("grey", [None, "sum"])
def test_preprocessed_graph_equals_the_prediction_pipeline(grey):
    channels = 1 if grey else 3
    mean, std = [0.4, 0.5, 0.6][:channels], [0.2, 0.25, 0.3][:channels]
    prep = Preprocessing(crop=32, resize=32, mean=mean, std=std, channels=channels, grey=grey)
    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=3, in_channels=channels).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.softmax(net(normalise(prepare_images(images, prep), prep)) / 2.0, 1)
        for kind, x in (("uint8", images), ("float", images / 255.0)):
            wrapped = Preprocessed(net, mean, std, temperature=2.0, input_kind=kind,
                                   grey=bool(grey)).eval()  # fmt: skip
            torch.testing.assert_close(wrapped(x), expected, atol=1e-6, rtol=1e-5)
