"""``hf-hub:`` weights through huggingface_hub's own download code, without a network: timm
models with random weights written as timm writes Hub repos (``save_for_hf``) into a fake HF
cache under a temporary ``HF_HOME``, loaded with ``HF_HUB_OFFLINE=1``, outputs compared with
timm's; each error is one line."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.finetune.prepare import weights_preprocessing
from resnetlab.weights import hf_hub, imagenet_classes
from resnetlab.weights.io import save_weights

REVISION = "0123456789abcdef" * 2 + "01234567"  # a commit hash: 40 hex digits
OTHER = "f" * 40
SRC = Path(__file__).resolve().parents[1] / "src"


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BatchNorm statistics and affine terms away from their defaults, so a wrong key shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model.eval()


def timm_repo(folder: Path, name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = randomised(timm.create_model(name, pretrained=False, **kwargs))
    save_for_hf(model, str(folder), safe_serialization=True)
    return model


def fill_cache(hf_home: Path, repo_id: str, files: Path, revision: str = REVISION) -> Path:
    """The cache layout huggingface_hub reads: ``models--ORG--NAME/snapshots/REV/*`` (links to
    the files, as its blobs are) and ``refs/main``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files.iterdir():
        (snapshot / path.name).symlink_to(path.resolve())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def resnet18_repo(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    folder = tmp_path_factory.mktemp("timm-resnet18")
    return timm_repo(folder, "resnet18"), folder


@pytest.fixture()
def hf_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_timm_resnet_loads_from_the_hf_cache_and_equals_timm(hf_home, resnet18_repo):
    reference, files = resnet18_repo
    fill_cache(hf_home, "timm/resnet18.a1_in1k", files)
    model = create_model("resnet18", pretrained="hf-hub:timm/resnet18.a1_in1k").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_diff(model(x), reference(x)) <= 1e-5
    cfg = model.pretrained_cfg
    timm_cfg = reference.pretrained_cfg
    assert cfg["hub"] == "timm/resnet18.a1_in1k" and cfg["revision"] == REVISION
    expected = {"resize": int(224 / timm_cfg["crop_pct"]), "crop": 224,
                "mean": list(timm_cfg["mean"]), "std": list(timm_cfg["std"]),
                "interpolation": timm_cfg["interpolation"]}  # fmt: skip
    assert cfg["preprocessing"] == expected == weights_preprocessing(model)
    assert expected["resize"] == 235 and expected["interpolation"] == "bicubic"
    assert cfg["classes"] == imagenet_classes() and cfg["licence"] == timm_cfg["license"]


def test_pinned_revision_and_a_new_head(hf_home, resnet18_repo):
    reference, files = resnet18_repo
    fill_cache(hf_home, "timm/resnet18.a1_in1k", files)
    spec = f"hf-hub:timm/resnet18.a1_in1k@{REVISION}"
    model = create_model("resnet18", num_classes=5, pretrained=spec).eval()
    assert model.fc.out_features == 5 and model.pretrained_cfg["head"] == "new"
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet18", pretrained=f"hf-hub:timm/resnet18.a1_in1k@{OTHER}")
    assert "not in the Hugging Face cache" in one_line(exc)


@pytest.mark.slow
def test_timm_vgg_classifier_convs_become_resnetlab_linears(tmp_path, hf_home):
    reference = timm_repo(tmp_path / "vgg", "vgg11")
    fill_cache(hf_home, "timm/vgg11.tv_in1k", tmp_path / "vgg")
    model = create_model("vgg11", pretrained="hf-hub:timm/vgg11.tv_in1k").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_diff(model(x), reference(x)) <= 1e-5
    assert model.pretrained_cfg["preprocessing"]["resize"] == 256  # crop_pct 0.875


def test_timm_resnet_d_loads(tmp_path, hf_home):
    reference = timm_repo(tmp_path / "d", "resnet50d")
    fill_cache(hf_home, "timm/resnet50d.ra2_in1k", tmp_path / "d")
    model = create_model("resnet50d", pretrained="hf-hub:timm/resnet50d.ra2_in1k").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_diff(model(x), reference(x)) <= 1e-5


def test_nothing_cached_offline_names_the_cache_and_the_variable(hf_home):
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet50", pretrained="hf-hub:timm/resnet50.a1_in1k")
    text = one_line(exc)
    assert "HF_HUB_OFFLINE" in text and str(hf_home / "hub") in text


def test_architecture_resnetlab_lacks_is_refused_before_any_weights(tmp_path, hf_home):
    files = tmp_path / "convnext"
    files.mkdir()
    config = {"architecture": "convnext_tiny", "num_classes": 1000, "pretrained_cfg": {}}
    (files / "config.json").write_text(json.dumps(config))  # no weights: none are fetched
    fill_cache(hf_home, "timm/convnext_tiny.fb_in1k", files)
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet50", pretrained="hf-hub:timm/convnext_tiny.fb_in1k")
    assert "convnext_tiny, an architecture resnetlab does not have" in one_line(exc)


def test_other_architecture_than_asked_names_the_right_call(hf_home, resnet18_repo):
    fill_cache(hf_home, "timm/resnet18.a1_in1k", resnet18_repo[1])
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet34", pretrained="hf-hub:timm/resnet18.a1_in1k")
    assert "holds a resnet18, not the resnet34" in one_line(exc)
    assert "create_model('resnet18'" in str(exc.value)


class NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """Answers as the Hub does for a repository that does not exist."""

    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args) -> None:
        pass


def test_missing_repository_is_one_line(hf_home, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoSuchRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(ResnetlabError) as exc:
            create_model("resnet50", pretrained="hf-hub:timm/no-such-model")
    finally:
        server.shutdown()
        server.server_close()
    assert "no such model repository on the Hugging Face Hub" in one_line(exc)
    assert 1 <= NoSuchRepo.requests <= 3


def test_bad_spec_and_missing_package_are_one_line(monkeypatch, hf_home):
    with pytest.raises(ResnetlabError, match="hf-hub:ORG/NAME"):
        create_model("resnet50", pretrained="hf-hub:resnet50")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet50", pretrained="hf-hub:timm/resnet50.a1_in1k")
    assert "pip install 'resnetlab[hub]'" in one_line(exc)


def test_a_repo_with_only_pytorch_model_bin_loads_offline(tmp_path, hf_home, resnet18_repo):
    reference, files = resnet18_repo
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").symlink_to(files / "config.json")
    torch.save(reference.state_dict(), legacy / "pytorch_model.bin")
    fill_cache(hf_home, "timm/resnet18.tv_in1k", legacy)
    model = create_model("resnet18", pretrained="hf-hub:timm/resnet18.tv_in1k").eval()
    assert model.pretrained_cfg["file"].endswith("pytorch_model.bin")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert relative_diff(model(x), reference(x)) <= 1e-5


# --- hostile and unlucky Hub input ----------------------------------------------------------


def resnetlab_repo(folder: Path, **changes) -> torch.nn.Module:
    """A Hub folder as ``export --format hub`` writes it, for a 2-class resnet20; ``changes``
    replace ``config.json`` fields (``mean``/``std`` those of its preprocessing)."""
    torch.manual_seed(0)
    model = randomised(create_model("resnet20", num_classes=2))
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "model.safetensors")
    prep = {"resize": 32, "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25],
            "interpolation": "bilinear", "channels": 3}  # fmt: skip
    prep |= {k: changes.pop(k) for k in ("mean", "std") if k in changes}
    config = {"format": hf_hub.EXPORT_FORMAT, "architecture": "resnet20", "num_classes": 2,
              "in_channels": 3, "label_names": ["benign", "malignant"], "preprocessing": prep,
              "license": "mit"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config | changes))
    return model


def test_hf_hub_loads_in_a_fresh_interpreter(tmp_path):
    """Nothing imported before resnetlab (timm loads ``huggingface_hub.errors`` as a side
    effect, which hid a lazily imported submodule); the installed huggingface_hub is used."""
    reference = resnetlab_repo(tmp_path / "repo")
    fill_cache(tmp_path / "hf", "org/name", tmp_path / "repo")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(reference.eval()(x), tmp_path / "y.pt")
    code = (
        "import sys, torch, huggingface_hub; from resnetlab import create_model; "
        "m = create_model('resnet20', pretrained='hf-hub:org/name').eval(); "
        "assert 'timm' not in sys.modules; "
        f"x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r}); "
        "assert torch.allclose(m(x), y, atol=1e-5), 'other outputs'; "
        "print(huggingface_hub.__version__, m.pretrained_cfg['classes'])"
    )
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env = os.environ | {"PYTHONPATH": path, "HF_HOME": str(tmp_path / "hf"),
                        "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    version, classes = done.stdout.strip().split(" ", 1)
    assert classes == "['benign', 'malignant']"
    print(f"huggingface_hub {version}: hf-hub: loads in a fresh interpreter")


@pytest.mark.parametrize(
    "spec",
    ["hf-hub:../..", "hf-hub:org/na--me", "hf-hub:org/" + "n" * 120, "hf-hub:org/name.git",
     "hf-hub:org/name@../../../../x", "hf-hub:org/name@/etc/passwd", "hf-hub:org/name@a\nb",
     "hf-hub:org/name@v1..2", "hf-hub:org/name@refs/heads/x.lock", "hf-hub:org/name@" + "r" * 200],
)  # fmt: skip
def test_bad_ids_and_revisions_are_one_line_before_any_lookup(spec, hf_home, monkeypatch):
    import huggingface_hub

    def no_lookup(*args, **kwargs):
        raise AssertionError("looked up")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_lookup)
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet18", pretrained=spec)
    text = one_line(exc)
    assert "is not a Hub model" in text or "is not a revision" in text
    assert len(text) < 600


@pytest.mark.parametrize("revision", [REVISION, "main", "v1.0", "refs/pr/1", "my-branch_2"])
def test_good_revisions_pass(revision):
    assert hf_hub.parse_spec(f"hf-hub:org/name@{revision}").revision == revision


def test_a_bad_id_through_the_cli_is_one_line_exit_2(tmp_path, hf_home, capsys):
    argv = ["export", "resnet20", "--pretrained", "hf-hub:../..", "--format", "onnx", "--out",
            str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a Hub model id" in err and not (tmp_path / "o").exists()


def test_a_well_formed_hub_folder_loads_with_its_classes(tmp_path):
    reference = resnetlab_repo(tmp_path / "repo")
    model = create_model("resnet20", pretrained=tmp_path / "repo").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_diff(model(x), reference.eval()(x)) <= 1e-6
    assert model.pretrained_cfg["classes"] == ["benign", "malignant"]


@pytest.mark.parametrize(
    ("change", "named"),
    [({"label_names": ["a", "b", "c"]}, "label_names gives 3 class names but the weights' "
      "head has 2 outputs"),
     ({"label_names": ["a"]}, "label_names gives 1 class names"),
     ({"num_classes": 3}, "num_classes is 3 but the weights' head has 2 outputs"),
     ({"mean": [0.5, 0.5]}, "preprocessing mean has 2 values but the weights take 3 input"),
     ({"std": [0.2, 0.2, 0.2, 0.2]}, "preprocessing std has 4 values"),
     ({"std": [0.2, 0.0, 0.2]}, "non-zero std")],
)  # fmt: skip
def test_a_config_that_does_not_match_its_weights_is_refused(tmp_path, hf_home, change, named):
    resnetlab_repo(tmp_path / "repo", **change)
    with pytest.raises(ResnetlabError) as exc:  # a Hub folder
        create_model("resnet20", pretrained=tmp_path / "repo")
    assert named in one_line(exc) and "config.json" in str(exc.value)
    fill_cache(hf_home, "org/name", tmp_path / "repo")
    with pytest.raises(ResnetlabError) as exc:  # the same through hf-hub:
        create_model("resnet20", pretrained="hf-hub:org/name")
    assert named in one_line(exc) and "hf-hub:org/name" in str(exc.value)


def test_export_of_a_hub_folder_with_three_names_for_two_outputs_is_one_line(tmp_path, capsys):
    resnetlab_repo(tmp_path / "repo", label_names=["a", "b", "c"])
    argv = ["export", "resnet20", "--pretrained", str(tmp_path / "repo"), "--format", "onnx",
            "--out", str(tmp_path / "onnx")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "label_names gives 3 class names" in err
    assert not (tmp_path / "onnx").exists()
