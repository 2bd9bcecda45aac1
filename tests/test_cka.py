"""Linear CKA: the minibatch unbiased estimator against the full-batch computation and two
reference library (pytorch-cka), its invariances, an accumulator whose size does not
grow with the images, and the ``cka`` study end to end on tiny nets and data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from resnetlab import create_model
from resnetlab.analysis.cka import (
    CkaAccumulator,
    default_layers,
    even_batches,
    hsic_matrix,
    linear_cka,
    minibatch_cka,
)
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments import cka as cka_module
from resnetlab.experiments.cka import CkaConfig, run_cka
from resnetlab.runfolder import read_jsonl

PEER = "peer/cifar-resnets/resnet20-12fca82f.th"


def features(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related representations of the same n inputs (X, and a nonlinear map of it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 30, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(30, 40, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        n, 40, generator=g, dtype=torch.float64
    )
    return x, y


def minibatch(x: torch.Tensor, y: torch.Tensor, size: int, *, unbiased: bool = True) -> float:
    """Minibatch CKA of two representations, batches of ``size`` in order."""
    acc = CkaAccumulator(2)
    for start, stop in even_batches(len(x), size):
        a, b = x[start:stop] - x[start:stop].mean(0), y[start:stop] - y[start:stop].mean(0)
        acc.add(hsic_matrix(torch.stack([a @ a.T, b @ b.T]), unbiased=unbiased), stop - start)
    return float(acc.cka([0], [1]))


def song_hsic(k: torch.Tensor, l: torch.Tensor) -> float:
    """The unbiased HSIC as Song et al. 2012 write it (Nguyen et al. 2021, Eq. 3)."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=k.dtype)
    value = torch.trace(k @ l) + (one.T @ k @ one) * (one.T @ l @ one) / ((n - 1) * (n - 2))
    value = value - 2 / (n - 2) * (one.T @ k @ l @ one)
    return float(value / (n * (n - 3)))


def test_unbiased_hsic_of_all_pairs_equals_song_and_pytorch_cka():
    from cka.hsic import hsic as reference_hsic

    x, y = features(24)
    grams = torch.stack([x @ x.T, y @ y.T, (x**2) @ (x**2).T])
    ours = hsic_matrix(grams)
    for i in range(3):
        for j in range(3):
            assert float(ours[i, j]) == pytest.approx(song_hsic(grams[i], grams[j]), rel=1e-10)
    cross, own_a, own_b = reference_hsic(grams[:1], grams[1:])
    torch.testing.assert_close(ours[:1, 1:], cross, rtol=1e-10, atol=0)
    torch.testing.assert_close(ours.diagonal()[1:], own_b, rtol=1e-10, atol=0)
    assert float(own_a[0]) == pytest.approx(float(ours[0, 0]), rel=1e-10)


def test_one_batch_is_the_full_batch_computation_exactly():
    x, y = features(96)
    # biased: the Gram form of one batch is Kornblith et al.'s feature-space form
    assert minibatch(x, y, 96, unbiased=False) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert minibatch(x, y, 96) == pytest.approx(linear_cka(x, y, unbiased=True), abs=1e-12)
    wide = torch.cat([y, y @ torch.randn(40, 200, dtype=torch.float64)], 1)  # 240 > 96 features
    a, b = x - x.mean(0), wide - wide.mean(0)
    feature_form = float((b.T @ a).square().sum() / (torch.linalg.norm(a.T @ a)
                                                     * torch.linalg.norm(b.T @ b)))  # fmt: skip
    assert linear_cka(x, wide) == pytest.approx(feature_form, abs=1e-12)


def test_minibatches_converge_on_the_full_batch_and_the_biased_estimate_does_not():
    x, y = features(3000, seed=1)
    full = linear_cka(x, y)
    assert minibatch(x, y, 100) == pytest.approx(full, abs=0.01)
    # independent wide features: the unbiased minibatch CKA stays near 0, the biased one not
    g = torch.Generator().manual_seed(2)
    u, v = (torch.randn(2000, 500, generator=g, dtype=torch.float64) for _ in range(2))
    assert abs(minibatch(u, v, 25)) < 0.05 and minibatch(u, v, 25, unbiased=False) > 0.3


def test_orthogonal_maps_and_isotropic_scaling_leave_cka_unchanged():
    x, y = features(120)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    for unbiased in (False, True):
        base = linear_cka(x, y, unbiased=unbiased)
        assert linear_cka(x, y @ q, unbiased=unbiased) == pytest.approx(base, abs=1e-10)
        assert linear_cka(3.7 * x, y, unbiased=unbiased) == pytest.approx(base, abs=1e-10)
        assert linear_cka(x, x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
    assert minibatch(x, y @ q * 0.01, 30) == pytest.approx(minibatch(x, y, 30), abs=1e-10)


def tiny_nets() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    a, b = create_model("resnet20").eval(), create_model("plain20").eval()
    return a, b, torch.randn(32, 3, 32, 32)


def test_minibatch_cka_of_two_nets_equals_the_reference_library():
    from cka import compute_cka

    a, b, x = tiny_nets()
    batches = [x[i : i + 16] for i in range(0, 32, 16)]
    ours = minibatch_cka(a, b, batches)
    assert ours.layers_a[0] == "relu" and ours.layers_a[-2:] == ["avgpool", "fc"]
    # pytorch-cka in float64: it forms the Grams of uncentred features, which float32 cannot
    # hold for an untrained net's logits (up to 0.075 off here); ours centres them first
    a64, b64 = copy.deepcopy(a).double(), copy.deepcopy(b).double()
    loader = DataLoader(TensorDataset(x.double()), batch_size=16)
    names = {"layers": ours.layers_a, "model2_layers": ours.layers_b}
    (reference,) = compute_cka(a64, b64, loader, **names, device="cpu", progress=False)
    torch.testing.assert_close(ours.cka.clamp(0, 1), reference.double(), atol=1e-5, rtol=0)
    (self_ref,) = compute_cka(a64, a64, loader, layers=ours.layers_a, device="cpu",
                              progress=False)  # fmt: skip
    torch.testing.assert_close(ours.self_a.clamp(0, 1), self_ref.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.self_a.diagonal(), torch.ones(12, dtype=torch.float64))


def test_the_accumulator_does_not_grow_with_the_images():
    a, _, _ = tiny_nets()
    sizes = []
    for n in (16, 160):
        images = torch.randn(n, 3, 32, 32)
        result = minibatch_cka(a, None, (images[i : i + 16] for i in range(0, n, 16)))
        assert result.images == n and result.batches == n // 16
        sizes.append(result.hsic.numel() * result.hsic.element_size())
    assert sizes[0] == sizes[1] == 12 * 12 * 8


def test_default_layers_by_family_and_a_shared_relu_is_refused():
    x = torch.randn(1, 3, 32, 32)
    assert default_layers(create_model("resnet18").eval(), x)[:2] == ["maxpool", "layer1.0"]
    assert default_layers(create_model("preact_resnet110").eval(), x)[0] == "conv1"
    vgg = default_layers(create_model("vgg11").eval(), x)
    assert vgg[0] == "features.1" and vgg[-1] == "classifier.6" and len(vgg) == 8 + 2 + 1
    with pytest.raises(ResnetlabError, match="runs 2 times"):
        minibatch_cka(create_model("resnet20").eval(), None, [torch.randn(8, 3, 32, 32)],
                      layers_a=["layer1.0.relu"])  # fmt: skip
    assert even_batches(10, 4) == [(0, 5), (5, 10)] and even_batches(5, 4) == [(0, 5)]
    assert [b - a for a, b in even_batches(10_000, 256)] == [250] * 40


def test_cka_command_writes_the_matrix_the_findings_and_a_report(tmp_path, tiny_npz, capsys):
    out = tmp_path / "cka"
    argv = ["cka", "resnet20", "plain20", "--data", str(tiny_npz), "--eval-size", "32",
            "--batch-size", "8", "--normalisation", "none", "--out", str(out)]  # fmt: skip
    argv.append("--report")
    assert main(argv) == 0
    assert "Corresponding layers" in capsys.readouterr().out
    result = json.loads((out / "cka.json").read_text())
    assert result["images"] == 32 and result["batches"] == 4 and not result["same"]
    assert len(result["cka"]) == 12 and result["layers_a"] == result["layers_b"]
    assert result["cka"][0][0] == pytest.approx(1.0)  # the stems: one conv, one seed
    assert [f["source"][:9] for f in result["findings"]] == ["Kornblith", "Nguyen, R"]
    rows = (out / "cka.csv").read_text().splitlines()
    assert rows[0].startswith("layer,relu,layer1.0") and len(rows) == 13
    assert len(read_jsonl(out / "measurements.jsonl")) == 4
    report = (out / "report.md").read_text()
    assert "cka.png" in report and "cka_self.png" in report and "block structure" in report
    assert main(["report", str(out)]) == 0 and (out / "report.html").stat().st_size > 10_000


def test_a_net_with_itself_runs_once_a_batch(tmp_path, tiny_npz):
    config = CkaConfig(models=["resnet20", "resnet20"], data=str(tiny_npz), batch_size=10,
                       normalisation="none")  # fmt: skip
    _, result = run_cka(config, tmp_path / "self", progress=False)
    assert result["same"] and len(result["nets"]) == 1 and result["images"] == 40
    assert np.allclose(np.diag(result["cka"]), 1.0) and result["cka"] == result["self_a"]
    assert "Block structure" in result["verdict"][0]


def test_an_interrupted_run_resumes_to_the_same_matrix(tmp_path, tiny_npz, monkeypatch):
    config = CkaConfig(models=["resnet20", "plain20"], data=str(tiny_npz), batch_size=8,
                       normalisation="none")  # fmt: skip
    _, whole = run_cka(config, tmp_path / "whole", progress=False)
    real, calls = cka_module.Cka.measure, {"n": 0}

    def stop_after_two(self, spec):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(self, spec)

    monkeypatch.setattr(cka_module.Cka, "measure", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_cka(config, tmp_path / "cut", progress=False)
    monkeypatch.setattr(cka_module.Cka, "measure", real)
    assert len(read_jsonl(tmp_path / "cut" / "measurements.jsonl")) == 2
    _, resumed = run_cka(config, tmp_path / "cut", resume=True, progress=False)
    assert resumed["cka"] == whole["cka"] and resumed["self_b"] == whole["self_b"]
    assert len(read_jsonl(tmp_path / "cut" / "measurements.jsonl")) == 5


def grey_run(folder: Path) -> Path:
    """A ``resnetlab train`` folder (older layout) holding a 1-channel ResNet-20."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "resnet20"}))
    torch.save({"model": create_model("resnet20", in_channels=1).state_dict(), "step": 1},
               folder / "best.pt")  # fmt: skip
    return folder


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["resnet20", "--eval-size", "2"], "--eval-size 2: the unbiased HSIC needs at least 4"),
        (["resnet20", "--batch-size", "2"], "at least 4 images a batch"),
        (["resnet20", "plain20", "resnet32"], "one or two nets, got 3"),
        ([], "one or two nets, got 0"),
        (["resnet20", "--layers", "nothing"], "none of the layers nothing"),
        (["GREY", "resnet20"], "takes 1-channel images and resnet20 (untrained) 3-channel"),
        (["resnet20", "--data", "GREY.npz"], "has 1-channel images, the nets take 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_npz, capsys, extra, words):
    if "GREY" in extra:
        extra = [str(grey_run(tmp_path / "grey")) if e == "GREY" else e for e in extra]
    if "GREY.npz" in extra:
        grey = tmp_path / "grey.npz"
        images = np.zeros((8, 28, 28), dtype=np.uint8)
        np.savez(grey, train_images=images, train_labels=np.arange(8) % 2, test_images=images,
                 test_labels=np.arange(8) % 2)  # fmt: skip
        extra = [str(grey) if e == "GREY.npz" else e for e in extra]
    else:
        extra += ["--data", str(tiny_npz)]
    argv = ["cka", *extra, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # decodes the CIFAR-10 JPEG archive once (cached afterwards)
def test_peer_resnet20_on_real_images_against_the_reference(shared_dir, tmp_path):
    from cka import compute_cka

    from resnetlab.experiments.trained import load_split, load_subject

    weights = shared_dir / PEER
    data = shared_dir / "data" / "cifar10-jpeg.tar.gz"
    config = CkaConfig(models=["resnet20", "plain20"], pretrained=[str(weights), "none"],
                       data=str(data), eval_size=256, batch_size=64)  # fmt: skip
    _, result = run_cka(config, tmp_path / "peer", progress=False)
    assert result["nets"][0]["weights"] == str(weights) and result["images"] == 256
    subject = load_subject("resnet20", str(weights))
    x, _, _ = load_split(str(data), "test", 256, 0, subject.normalisation)
    x = x[torch.randperm(256, generator=torch.Generator().manual_seed(0))]  # the study's order
    ours = minibatch_cka(subject.model, None, [x[i : i + 64] for i in range(0, 256, 64)])
    model = copy.deepcopy(subject.model).double()
    loader = DataLoader(TensorDataset(x.double()), batch_size=64)
    (ref,) = compute_cka(model, model, loader, layers=ours.layers_a, device="cpu", progress=False)
    torch.testing.assert_close(ours.self_a.clamp(0, 1), ref.double(), atol=1e-5, rtol=0)
    study = torch.tensor(result["self_a"], dtype=torch.float64)  # BN-folded: rounding apart
    torch.testing.assert_close(study, ours.self_a, atol=1e-4, rtol=0)


def test_findings_read_counterparts_stages_and_blocks_from_the_matrices():
    from resnetlab.experiments.cka_findings import (
        block_finding,
        correspondence_finding,
        largest_block,
        stage_match_finding,
    )

    names = ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"]
    stages = ["stem", "layer1", "layer1", "layer2", "layer2", "head"]
    near = torch.eye(6, dtype=torch.float64) * 0.5 + 0.4
    found = correspondence_finding(near, names, stages, ["a", "b"])
    assert found["holds"] and "6 of 6 layers" in found["measured"]
    shifted = torch.roll(near, 1, dims=1)  # every best match one layer off
    assert correspondence_finding(shifted, names, stages, ["a", "b"])["holds"] is False
    deeper = ["relu", "layer1.0", "layer1.1", "layer1.2", "layer2.0", "fc"]
    cross = torch.full((6, 6), 0.1, dtype=torch.float64)
    for i, j in enumerate([0, 2, 3, 4, 4, 5]):
        cross[i, j] = 0.9
    staged = stage_match_finding(cross, [names, deeper],
                                 [stages, ["stem", *["layer1"] * 3, "layer2", "head"]],
                                 ["a", "b"])  # fmt: skip
    assert staged["holds"] and "layer1.1 → layer1.2" in staged["measured"]
    block = torch.eye(6, dtype=torch.float64)
    block[1:5, 1:5] = 0.95
    assert largest_block(block) == (1, 5) and largest_block(torch.eye(6)) is None
    nets = [{"label": "small", "layers": names, "parameters": 10},
            {"label": "big", "layers": names, "parameters": 20}]  # fmt: skip
    trend = block_finding([torch.eye(6, dtype=torch.float64), block], nets, same=False)
    assert trend["holds"] is True and "big: largest block" in trend["measured"]
    assert block_finding([block], nets[:1], same=True)["holds"] is None
