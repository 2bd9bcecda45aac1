"""The gradient-flow experiment: run folder, printed numbers, resume, real data."""

from __future__ import annotations

import json

import pytest
import torch

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.gradient_flow import (
    GradientFlowConfig,
    _batch,
    expand_models,
    run_gradient_flow,
)
from resnetlab.models import create_model
from resnetlab.runfolder import read_jsonl


def _tiny(**changes) -> GradientFlowConfig:
    base = {"models": ["mlp4", "plain20", "resnet20"], "seeds": 2, "batch_size": 4}
    return GradientFlowConfig(**(base | changes))


@pytest.mark.slow
def test_run_folder_contents(tmp_path):
    run_dir = run_gradient_flow(_tiny(), tmp_path / "gf", progress=False).folder
    for name in ("config.json", "run.json", "gradient_flow.json", "gradient_flow.csv",
                 "seed_mlp.csv", "seed_mlp.png", "gradient_flow_inputs.png",
                 "gradient_flow_weights.png", "layer_responses.png"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "gradient_flow.json").read_text())
    profiles = result["profiles"]
    assert set(profiles) == {"mlp4-plain", "mlp4-residual", "plain20", "resnet20"}
    p = profiles["resnet20"]["input_grad_norm"]
    assert len(p["mean"]) == 9 and all(lo <= m <= hi for lo, m, hi in
                                       zip(p["min"], p["mean"], p["max"], strict=True))  # fmt: skip
    assert profiles["resnet20"]["seeds"] == [0, 1]
    assert len(profiles["plain20"]["response_std"]["mean"]) == 19
    assert any("CIFAR 20 layers" in line for line in result["summary"])
    assert json.loads((run_dir / "config.json").read_text())["models"] == _tiny().models


def test_resume_skips_finished_work_and_refuses_other_settings(tmp_path):
    out = tmp_path / "gf"
    run_gradient_flow(_tiny(models=["mlp3"]), out, progress=False)
    records = read_jsonl(out / "profiles.jsonl")
    assert len(records) == 4
    (out / "profiles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    run_gradient_flow(_tiny(models=["mlp3"]), out, resume=True, progress=False)
    assert read_jsonl(out / "profiles.jsonl")[:3] == records[:3]
    assert len(read_jsonl(out / "profiles.jsonl")) == 4
    with pytest.raises(ResnetlabError, match="other settings"):
        run_gradient_flow(_tiny(models=["mlp3"], seeds=3), out, resume=True, progress=False)
    with pytest.raises(ResnetlabError, match="not empty"):
        run_gradient_flow(_tiny(models=["mlp3"]), out, progress=False)


def test_cli_mlp_prints_the_four_numbers(tmp_path, capsys):
    assert main(["gradient-flow", "--mlp", "--seeds", "1", "--out", str(tmp_path / "m")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "grad norm" in line]
    assert len(lines) == 4
    numbers = {(int(line.split()[1]), line.split()[2]): float(line.split()[-1]) for line in lines}
    assert numbers[(20, "residual")] > numbers[(20, "plain")]


def test_checkpoint_needs_one_model(capsys):
    assert main(["gradient-flow", "--checkpoint", "x.pt"]) == 2
    assert "--models NAME" in capsys.readouterr().err
    with pytest.raises(ResnetlabError, match="exactly one model"):
        run_gradient_flow(_tiny(checkpoint="x.pt"))  # one file, several models


def test_real_data_batch(shared_dir, tmp_path):
    spec = str(shared_dir / "data" / "pneumoniamnist-balanced.npz")
    config = _tiny(models=["plain20", "resnet20"], seeds=1, data=spec)
    run_dir = run_gradient_flow(config, tmp_path / "gf", progress=False).folder
    assert "PneumoniaMNIST" in (run_dir / "data.txt").read_text()
    profiles = json.loads((run_dir / "gradient_flow.json").read_text())["profiles"]
    assert all(v > 0 for v in profiles["resnet20"]["input_grad_norm"]["mean"])


@pytest.mark.slow
def test_profile_at_a_trained_checkpoint(shared_dir, tmp_path):
    checkpoint = next((shared_dir / "peer" / "cifar-resnets").glob("resnet20-*.th"))
    init = run_gradient_flow(_tiny(models=["resnet20"], seeds=1), tmp_path / "a", progress=False)
    init = init.folder
    config = _tiny(models=["resnet20"], seeds=1, checkpoint=str(checkpoint))
    trained = run_gradient_flow(config, tmp_path / "b", progress=False).folder
    profiles = [
        json.loads((d / "gradient_flow.json").read_text())["profiles"]["resnet20"]
        for d in (init, trained)
    ]
    at_init, at_checkpoint = (p["input_grad_norm"]["mean"] for p in profiles)
    assert len(at_checkpoint) == 9 and all(v > 0 for v in at_checkpoint)
    assert at_checkpoint != at_init


def test_a_net_with_an_imagenet_stem_gets_the_imagenet_size_whatever_its_family():
    """The input size comes from the model's facts (its stem), not from its family's name."""
    config = _tiny(models=["resnet18d", "resnet20"], imagenet_size=48)
    deep, cifar = expand_models(config.models)
    assert deep.group == "ImageNet 18 layers" and cifar.group == "CIFAR 20 layers"
    assert _batch(deep, config, 0, None)[0].shape == (4, 3, 48, 48)
    assert _batch(cifar, config, 0, None)[0].shape == (4, 3, 32, 32)


def test_each_model_at_its_own_checkpoint_in_layer_order_and_sorted(tmp_path):
    """He et al. 2015, Fig. 7 after training: one weights file per model, responses in layer
    order and sorted; the weights measured are the files', not a fresh initialisation."""
    files = []
    for name, seed in (("plain20", 5), ("resnet20", 6)):
        torch.manual_seed(seed)
        model = create_model(name)
        for m in model.modules():  # trained-like BN statistics, unlike a fresh net's identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        files.append(tmp_path / f"{name}.pt")
        torch.save(model.state_dict(), files[-1])
    config = _tiny(models=["plain20", "resnet20"], seeds=1, checkpoint=[str(f) for f in files])
    run = run_gradient_flow(config, tmp_path / "gf", progress=False).folder
    profiles = json.loads((run / "gradient_flow.json").read_text())["profiles"]
    fresh = run_gradient_flow(_tiny(models=["plain20", "resnet20"], seeds=1), tmp_path / "init",
                              progress=False).folder  # fmt: skip
    init = json.loads((fresh / "gradient_flow.json").read_text())["profiles"]
    for name in ("plain20", "resnet20"):
        in_order = profiles[name]["response_std"]["mean"]
        ranked = profiles[name]["response_sorted"]["mean"]
        assert ranked == sorted(in_order, reverse=True) and len(ranked) == 19  # stem + 18
        assert in_order != init[name]["response_std"]["mean"]
    assert (run / "layer_responses_sorted.png").is_file()
    with pytest.raises(ResnetlabError, match="exactly one model per weights file: 2 for 1"):
        run_gradient_flow(_tiny(models=["resnet20"], checkpoint=[str(f) for f in files]))
