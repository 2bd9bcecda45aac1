"""The ONNX Runtime engine behind ``optimize_for_inference``: the logits of the eager model to
1e-4, the export cached by weights and shape (a corrupt entry rebuilt), and the torch path
wherever onnxruntime is missing or cannot run the model."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from PIL import Image
from torch import nn

from resnetlab import create_model
from resnetlab.artifact import load_trained
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.finetune.predict import predict_files
from resnetlab.models import runtime
from resnetlab.models.inference import input_device, optimize_for_inference, resolve_engine
from resnetlab.models.runtime import OnnxRuntimeModule, cache_key, prune
from test_inference import randomise_bn


def eager(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_bn(create_model(name))


@pytest.mark.parametrize(("name", "size"), [("resnet20", 32), ("plain20", 32), ("resnet18", 32)])
def test_onnxruntime_gives_the_eager_logits(home, name: str, size: int) -> None:
    model = eager(name)
    fast = optimize_for_inference(model, input_size=(3, size, size))
    assert isinstance(fast, OnnxRuntimeModule) and resolve_engine("auto", model) == "onnxruntime"
    assert fast.startup is not None and not fast.startup.cached
    assert list(fast.parameters()) == [] and input_device(fast) == torch.device("cpu")
    x = torch.randn(8, 3, size, size)
    with torch.no_grad():
        expected = model(x)
    for batch in (1, 3, 8):  # the batch axis is dynamic
        for inputs in (x[:batch], x[:batch].contiguous(memory_format=torch.channels_last)):
            got = fast(inputs)
            assert isinstance(got, torch.Tensor) and got.shape == expected[:batch].shape
            assert (got - expected[:batch]).abs().max() <= 1e-4
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is intact


def test_the_engine_runs_inference_only_on_torchs_threads(home) -> None:
    fast = optimize_for_inference(eager("resnet20"), input_size=(3, 32, 32), threads=1)
    assert fast.eval() is fast and fast.training is False
    with pytest.raises(ResnetlabError, match="inference only"):
        fast.train()
    assert fast.sessions[(3, 32, 32)].get_session_options().intra_op_num_threads == 1
    default = optimize_for_inference(eager("resnet20"), input_size=(3, 32, 32))
    assert default.threads == torch.get_num_threads()
    other = default(torch.randn(2, 3, 40, 40))  # another input size: a session of its own
    assert other.shape == (2, 10) and set(default.sessions) == {(3, 32, 32), (3, 40, 40)}
    with pytest.raises(ResnetlabError, match=r"\(N, C, H, W\)"):
        default(torch.randn(3, 32, 32))


def test_the_export_is_cached_by_weights_graph_and_shape(home) -> None:
    model = eager("resnet20")
    first = optimize_for_inference(model, input_size=(3, 32, 32))
    again = optimize_for_inference(model, input_size=(3, 32, 32))
    assert not first.startup.cached and again.startup.cached and again.startup.export_s == 0
    entries = sorted((home / "onnx").glob("*.onnx"))
    assert len(entries) == 1 and entries[0].with_suffix(".json").is_file()
    folded = first._folded[0]
    plain = optimize_for_inference(eager("plain20"), engine="torch", channels_last=False)
    plain.load_state_dict(folded.state_dict())  # the same weights, no additions
    keys = {
        cache_key(folded, (3, 32, 32)),
        cache_key(folded, (3, 40, 40)),
        cache_key(plain, (3, 32, 32)),
        cache_key(
            optimize_for_inference(eager("resnet20", seed=1), engine="torch", channels_last=False),
            (3, 32, 32),
        ),
    }
    assert len(keys) == 4  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(first(x), again(x))


@pytest.mark.parametrize("damage", ["bytes", "facts", "no facts", "not onnx, checksum fixed"])
def test_a_corrupt_cache_entry_is_rebuilt_not_trusted(home, damage: str, capsys) -> None:
    model = eager("resnet20")
    optimize_for_inference(model, input_size=(3, 32, 32))
    (entry,) = (home / "onnx").glob("*.onnx")
    if damage == "bytes":
        data = bytearray(entry.read_bytes())
        data[-100:] = bytes(100)  # weights zeroed: still a loadable model, other logits
        entry.write_bytes(bytes(data))
    elif damage == "facts":
        entry.with_suffix(".json").write_text("{not json")
    elif damage.startswith("not onnx"):  # its checksum matches: ORT itself refuses it
        entry.write_bytes(b"not a model")
        facts = json.loads(entry.with_suffix(".json").read_text())
        facts["sha256"] = hashlib.sha256(b"not a model").hexdigest()
        entry.with_suffix(".json").write_text(json.dumps(facts))
    else:
        entry.with_suffix(".json").unlink()
    rebuilt = optimize_for_inference(model, input_size=(3, 32, 32))
    assert not rebuilt.startup.cached and "exporting it again" in capsys.readouterr().err
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (rebuilt(x) - model(x)).abs().max() <= 1e-4
    facts = json.loads(entry.with_suffix(".json").read_text())
    assert facts["sha256"] and facts["opset"] == runtime.OPSET
    assert optimize_for_inference(model, input_size=(3, 32, 32)).startup.cached


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path) -> None:
    for i, name in enumerate("abcd"):
        (tmp_path / f"{name}.onnx").write_bytes(bytes(100))
        (tmp_path / f"{name}.json").write_text("{}")
        os.utime(tmp_path / f"{name}.onnx", (1000 + i, 1000 + i))
    prune(tmp_path, keep="a", limit=250)  # room for two: d and c, the newest; a is kept too
    assert sorted(p.stem for p in tmp_path.glob("*.onnx")) == ["a", "c", "d"]
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["a", "c", "d"]


def test_without_onnxruntime_auto_is_torch_and_asking_for_it_is_one_line(
    home, monkeypatch, tmp_path, capsys
) -> None:
    monkeypatch.setattr(runtime, "onnxruntime", None)
    model = eager("resnet20")
    fast = optimize_for_inference(model, input_size=(3, 32, 32))
    assert not isinstance(fast, OnnxRuntimeModule) and resolve_engine("auto", model) == "torch"
    with pytest.raises(ResnetlabError, match=r"resnetlab\[ort\]"):
        optimize_for_inference(model, engine="onnxruntime")
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(image)
    assert main(["predict", "resnet20", str(image), "--engine", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "resnetlab[ort]" in err
    assert not (home / "onnx").exists()


def test_where_ort_cannot_run_the_model_auto_falls_back_and_onnxruntime_says_so(
    home, monkeypatch, capsys
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::magic' is not supported")

    monkeypatch.setattr(runtime, "onnx_bytes", broken)
    model = eager("resnet20")
    fast = optimize_for_inference(model, input_size=(3, 32, 32))
    assert "using torch instead" in capsys.readouterr().err
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() <= 1e-4
    with pytest.raises(ResnetlabError, match="aten::magic.*--engine torch"):
        optimize_for_inference(model, engine="onnxruntime", input_size=(3, 32, 32))


def test_a_model_off_the_cpu_or_float32_keeps_torch() -> None:
    model = eager("resnet20").double()
    assert resolve_engine("auto", model) == "torch"
    with pytest.raises(ResnetlabError, match="float32 models on the CPU"):
        resolve_engine("onnxruntime", model)
    with pytest.raises(ResnetlabError, match="unknown engine"):
        resolve_engine("tensorrt", model)


def test_predict_makes_its_engine_once_and_both_engines_agree(home, tmp_path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(torch.randint(0, 256, (36, 40, 3), dtype=torch.uint8).numpy()).save(
            paths[-1]
        )
    torch.manual_seed(0)
    loaded = load_trained("resnet20")
    ort, _ = predict_files(loaded, paths, top_k=10)
    assert isinstance(loaded.engines["auto"], OnnxRuntimeModule)
    made = loaded.engines["auto"]
    predict_files(loaded, paths[:1])
    assert loaded.engines["auto"] is made  # the second call reuses it: no export, no fold
    plain, _ = predict_files(loaded, paths, top_k=10, engine="torch")
    assert not isinstance(loaded.engines["torch"], OnnxRuntimeModule)
    for a, b in zip(ort, plain, strict=True):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert max(abs(p - q) for (_, p), (_, q) in zip(a.top, b.top, strict=True)) <= 1e-5
