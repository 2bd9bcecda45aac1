"""``resnetlab explain --checks``: the randomisation curve in explain.json equals quantus's MPRT at
each block, the random floor's deletion areas equal quantus's PixelFlipping, the verdicts follow
the numbers, and the report shows the curves with captions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import quantus
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab.analysis.explanation_checks import area
from resnetlab.analysis.explanation_suite import (
    SIMILAR,
    block_stops,
    faithfulness_verdict,
    paired_interval,
    randomisation_verdict,
)
from resnetlab.analysis.gradcam import cam_maps
from resnetlab.artifact import load_trained
from resnetlab.card import save_artifact, train_card
from resnetlab.cli import main
from resnetlab.data.preprocess import load_image


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A resnet20 with two classes and trained-like BN statistics, saved as a model folder."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=2).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("model")
    card = train_card({"model": "resnet20"}, ["normal", "pneumonia"], None, model)
    save_artifact(folder, model.state_dict(), card)
    return folder


def images(folder, n: int) -> list[str]:
    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        paths.append(str(folder / f"img{i}.png"))
    return paths


def test_explain_checks_agree_with_quantus_and_the_report_shows_them(model_dir, tmp_path, capsys):
    paths = images(tmp_path, 4)
    out = tmp_path / "maps"
    argv = ["explain", str(model_dir), *paths, "--method", "gradcam", "--checks", "on",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    checks = json.loads((out / "explain.json").read_text())["checks"]
    trained = load_trained(str(model_dir))
    model = trained.model
    x = torch.cat([trained.inputs(load_image(p)[None]) for p in paths])
    targets = model(x).argmax(1)

    def explain(model, inputs, targets, **kwargs):
        maps = cam_maps(model.eval(), torch.as_tensor(inputs), target=torch.as_tensor(targets))
        return maps["maps"][:, None].numpy()

    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=None,
                    explain_func=explain, device="cpu")  # fmt: skip
    curve = checks["methods"]["gradcam"]["randomisation"]
    stops = block_stops(model)
    assert [s["block"] for s in curve] == list(stops.values())
    assert curve[0]["block"] == "fc" and curve[-1]["block"] == "conv1"
    for step in curve:
        np.testing.assert_allclose(step["spearman"], theirs[step["layer"]], atol=1e-6)
    passed, sentence = randomisation_verdict(curve, "Grad-CAM")
    assert passed == any(s["mean"] < SIMILAR for s in curve)
    assert sentence in checks["verdicts"] and sentence in printed

    # the random floor: quantus's PixelFlipping on the same noise (it steps through the three
    # channels one at a time, so every third of its points is one of ours)
    per_step = checks["pixels_per_step"]
    noise = torch.rand((4, 32, 32), generator=torch.Generator().manual_seed(0))
    flipping = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black",
                                     disable_warnings=True)  # fmt: skip
    curves = np.asarray(flipping(model=model, x_batch=x.numpy(), y_batch=targets.numpy(),
                                 a_batch=noise[:, None].numpy(), device="cpu"))  # fmt: skip
    with torch.no_grad():
        start = torch.softmax(model(x), 1).gather(1, targets[:, None]).numpy()
    ours = np.asarray(checks["random"]["deletion"]["auc"])
    np.testing.assert_allclose(ours, area(np.hstack([start, curves[:, 2::3]])), atol=1e-5)

    # the deletion verdict is read off the bootstrap interval of random minus Grad-CAM
    deletion = checks["methods"]["gradcam"]["deletion"]
    gain = deletion["gain_over_random"]
    assert gain["mean"] == pytest.approx(np.mean(ours - np.asarray(deletion["auc"])))
    assert gain["lo"] <= gain["mean"] <= gain["hi"]
    assert deletion["verdict"] == faithfulness_verdict("Grad-CAM", "deletion", gain)[0]

    md = (out / "report.md").read_text()
    assert "![randomisation.png](randomisation.png)" in md and "Adebayo et al. 2018" in md
    assert "![deletion.png](deletion.png)" in md and "![insertion.png](insertion.png)" in md
    assert sentence in md and "bootstrap 95 % interval over the images" in md
    html = (out / "report.html").read_text()
    figures = len(re.findall(r"<figure[ >]", html))
    assert figures == 3 + 4  # the three curves and the four overlays


def test_checks_auto_skips_few_images_and_says_so(model_dir, tmp_path, capsys):
    paths = images(tmp_path, 2)
    assert main(["explain", str(model_dir), *paths, "--out", str(tmp_path / "m")]) == 0
    summary = json.loads((tmp_path / "m" / "explain.json").read_text())
    assert "checks" not in summary and "--checks on" in summary["checks_skipped"]
    assert summary["checks_skipped"] in (tmp_path / "m" / "report.md").read_text()
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(model_dir), *paths, "--checks", "maybe", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--checks" in capsys.readouterr().err


def test_verdicts_follow_the_numbers() -> None:
    curve = [{"block": b, "mean": m} for b, m in (("fc", 0.9), ("layer3.2", 0.4), ("conv1", 0.1))]
    passed, sentence = randomisation_verdict(curve, "Grad-CAM")
    assert passed and "layer3.2" in sentence and "2 of 3" in sentence
    flat = [{"block": "fc", "mean": 0.8}, {"block": "conv1", "mean": 0.6}]
    passed, sentence = randomisation_verdict(flat, "Grad-CAM++")
    assert not passed and "lowest 0.60" in sentence
    # a gain whose interval excludes 0 is "better"; one that straddles it is "not shown"
    values = np.array([0.10, 0.12, 0.08, 0.11, 0.09, 0.10])
    gain = paired_interval(values)
    assert gain["mean"] == pytest.approx(0.10) and 0.08 <= gain["lo"] < 0.10 < gain["hi"] <= 0.12
    assert faithfulness_verdict("Grad-CAM", "insertion", gain)[0] == "better"
    straddle = paired_interval(values - 0.10)
    assert faithfulness_verdict("Grad-CAM", "insertion", straddle)[0] == "not shown"
    assert faithfulness_verdict("Grad-CAM", "insertion", paired_interval(-values))[0] == "worse"
    assert paired_interval(np.array([0.3]))["lo"] is None
