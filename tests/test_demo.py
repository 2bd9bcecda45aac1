"""``resnetlab demo --quick`` and the synthetic shapes it trains on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from resnetlab import runfolder
from resnetlab.cli import main
from resnetlab.data.synthetic import SHAPES, make_shapes
from resnetlab.errors import ResnetlabError


def test_shapes_are_deterministic_balanced_and_seeded() -> None:
    a = make_shapes(40, 10, 20, size=16, seed=3)
    b = make_shapes(40, 10, 20, size=16, seed=3)
    c = make_shapes(40, 10, 20, size=16, seed=4)
    assert a.train.images.shape == (40, 3, 16, 16) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:20], a.test.images)  # splits are drawn apart
    assert torch.bincount(a.train.labels, minlength=len(SHAPES)).tolist() == [4] * len(SHAPES)
    assert a.classes == list(SHAPES) and len(a.val) == 10 and a.image_size == (16, 16)
    assert float(a.train.images.float().std()) > 20  # not blank images


def test_shapes_refuse_impossible_sizes() -> None:
    with pytest.raises(ResnetlabError, match="at least 10 train"):
        make_shapes(5, 0, 20)
    with pytest.raises(ResnetlabError, match="at least 8 px"):
        make_shapes(20, 0, 20, size=4)


@pytest.mark.slow
def test_quick_demo_writes_and_names_the_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the demo's thread setting is undone
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report: {out / 'report.html'}"
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") >= 3  # comparison, gradient flow, degradation
    for part in ("compare", "gradient-flow", "degradation"):
        assert (out / part / "config.json").is_file(), part
        assert f"## {part}" in md
    assert "degradation.png" in md and "Claim 1" in md and "Claim 2" in md
    timings = json.loads((out / "demo.json").read_text())["timings"]
    assert timings["total_s"] >= timings["degradation_s"] > 0
    result = json.loads((out / "degradation" / "degradation.json").read_text())
    assert result["short_budget"] and {c["claim"] for c in result["verdict"]} == {1, 2}
    # the verdict first, every finding tied to a claim, the machine once
    assert md.index("## Verdict") < md.index("## compare") and md.index("## Verdict") < md.index(
        "## degradation"
    )
    assert re.search(r"<h1>[^<]*</h1>\s*<section class='verdict'><h2>Verdict</h2>", html)
    verdict = json.loads((out / "demo.json").read_text())["verdict"]
    claims = {f["claim"] for f in result["findings"]}
    assert len(verdict) >= 5 and verdict[0].startswith("Claim 1") and len(claims) == 2
    for part in ("degradation/degradation.json", "gradient-flow/gradient_flow.json",
                 "compare/compare.json"):  # fmt: skip
        findings = json.loads((out / part).read_text())["findings"]
        assert findings, part
        for f in findings:
            assert f["claim"] and f["source"] and f["measured"] and f["relation"], part
            assert f["verdict"] in verdict, part
    assert html.count("<b>Claim") == html.count("<b>Measured:</b>") == html.count("<b>So") >= 5
    cpu = runfolder.cpu_name()
    assert html.count(cpu) == 1 and html.count("Machine and versions") == 1
    assert html.count(torch.__version__) == 1


def test_real_splits_are_made_small(tmp_path: Path) -> None:
    from PIL import Image

    from resnetlab.data import FileImageSet
    from resnetlab.data.synthetic import resize_split, subsample

    shapes = make_shapes(100, 0, 20, size=32)
    small = resize_split(shapes.train, 16)
    assert small.images.shape == (100, 3, 16, 16) and torch.equal(small.labels, shapes.train.labels)
    part = subsample(shapes.train, 30, seed=0)
    assert len(part) == 30 and torch.bincount(part.labels).tolist() == [3] * 10
    assert subsample(shapes.train, 500, seed=0) is shapes.train
    paths = []
    for i, colour in enumerate(("red", "blue")):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 20), colour).save(paths[-1])
    files = FileImageSet(paths, torch.tensor([0, 1]), ["a", "b"], "two files")
    fitted = resize_split(files, 8)
    assert fitted.images.shape == (2, 3, 8, 8)
    assert fitted.images[0, :, 4, 4].tolist() == [255, 0, 0]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ResnetlabError, match="bad.png"):
        resize_split(FileImageSet([tmp_path / "bad.png"], torch.tensor([0]), ["a"], "bad"), 8)
