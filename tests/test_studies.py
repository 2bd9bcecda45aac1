"""Studies of why skips work: lesion, loss landscape, path lengths, shattered gradients, and the
Dirac / zero-scale starts. Small nets and a tiny CIFAR-shaped .npz; the peer check reads
``../shared``."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments import landscape as landscape_module
from resnetlab.experiments.landscape import (
    LandscapeConfig,
    filter_normalised_direction,
    run_landscape,
    surface_facts,
)
from resnetlab.experiments.lesion import LesionConfig, plan_variants, run_lesion
from resnetlab.experiments.paths import Routed, effective_range, path_counts
from resnetlab.experiments.shattered import autocorrelation, fit_decay
from resnetlab.experiments.trained import Bypass, Chain, errors_of_variants, load_subject
from resnetlab.models.inference import optimize_for_inference
from resnetlab.runfolder import read_jsonl

PEER20 = ("resnet20-12fca82f.th", 81.03)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A CIFAR-shaped data set: 10 classes, 32×32 RGB, 60/20/40 images."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    g = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60), ("val", 20), ("test", 40)):
        arrays[f"{split}_images"] = g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def test_dirac_plain_block_is_identity_at_init():
    model = create_model("plain20", init="dirac").eval()
    x = torch.rand(2, 16, 32, 32)  # a block's input is a ReLU output: non-negative
    for block in model.layer1:
        torch.testing.assert_close(block(x), x, atol=1e-4, rtol=1e-4)
    y = torch.rand(2, 32, 16, 16)
    torch.testing.assert_close(model.layer2[1](y), y, atol=1e-4, rtol=1e-4)
    he = create_model("plain20").eval()
    assert (he.layer1[0](x) - x).abs().max() > 0.1  # the He start is not the identity


def test_residual_scale_starts_as_the_shortcut():
    model = create_model("resnet20", residual_scale=True).eval()
    x = torch.rand(2, 16, 32, 32)
    for block in model.layer1:
        torch.testing.assert_close(block(x), x)
    down = model.layer2[0]
    torch.testing.assert_close(down(x), torch.relu(down.downsample(x)))
    pre = create_model("preact_resnet110", residual_scale=True).eval()
    z = torch.randn(2, 16, 32, 32)
    torch.testing.assert_close(pre.layer1[1](z), z)  # pre-activation: exactly the identity
    assert sum(p.numel() for n, p in model.named_parameters() if n.endswith("alpha")) == 9
    with pytest.raises(ResnetlabError, match="residual_scale"):
        create_model("plain20", residual_scale=True)
    with pytest.raises(ResnetlabError, match="init"):
        create_model("plain20", init="orthogonal")


def test_bypass_equals_a_zeroed_residual_branch():
    torch.manual_seed(0)
    model = create_model("resnet20", shortcut="B").eval()
    x = torch.randn(3, 16, 32, 32).relu()
    for block in (model.layer1[1], model.layer2[0]):
        zeroed = copy.deepcopy(block)
        torch.nn.init.zeros_(zeroed.bn2.weight)
        torch.nn.init.zeros_(zeroed.bn2.bias)
        torch.testing.assert_close(Bypass(block)(x), zeroed(x))


def test_prefix_reuse_matches_a_full_forward_of_the_lesioned_net():
    torch.manual_seed(1)
    model = create_model("resnet20").eval()
    for m in model.modules():  # non-trivial BN statistics, so folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(40, 3, 32, 32), torch.arange(40) % 10
    chain = Chain(optimize_for_inference(model, engine="torch"))
    plans = plan_variants(chain.blocks, [Bypass(b) for b in chain.blocks], 2, 2, 0)
    results = errors_of_variants(chain, x, y, [p["variant"] for p in plans], batch=16)
    names = chain.names
    for plan, result in zip(plans, results[1:], strict=True):
        lesioned = copy.deepcopy(model)
        originals = [lesioned.get_submodule(n) for n in names]
        for i, name in enumerate(names):  # rebuild the variant on the unfolded copy
            j = chain.blocks.index(plan["variant"][i]) if plan["variant"][i] in chain.blocks else i
            replacement = (
                originals[j] if plan["variant"][i] in chain.blocks else Bypass(originals[i])
            )
            stage, index = name.split(".")
            getattr(lesioned, stage)[int(index)] = replacement
        with torch.no_grad():
            logits = lesioned(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        assert result["loss"] == pytest.approx(loss, rel=1e-4)
        assert result["error"] == pytest.approx((logits.argmax(1) != y).float().mean().item())


def test_plans_mark_plain_downsampling_blocks_and_swap_same_shapes():
    chain = Chain(create_model("plain20").eval())
    plans = plan_variants(chain.blocks, [Bypass(b) for b in chain.blocks], 3, 3, 0)
    singles = [p["blocks"][0] for p in plans if p["kind"] == "single"]
    assert [chain.names[i] for i in range(9) if i not in singles] == ["layer2.0", "layer3.0"]
    for p in plans:
        if p["kind"] == "swap":
            for a, b in p["blocks"]:
                assert chain.names[a].split(".")[0] == chain.names[b].split(".")[0]
                assert {chain.names[a], chain.names[b]}.isdisjoint({"layer2.0", "layer3.0"})


def test_filter_normalised_direction_matches_li_et_al():
    model = create_model("resnet20")
    d = filter_normalised_direction(model, torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            assert d[name].abs().sum() == 0  # biases and BN ignored, as the paper does
        else:
            for w, v in zip(p.detach(), d[name], strict=True):  # their normalize_direction
                assert v.norm().item() == pytest.approx(w.norm().item(), rel=1e-5)


def test_surface_facts_on_a_convex_and_a_wavy_bowl():
    axis = np.linspace(-1, 1, 11)
    a, b = np.meshgrid(axis, axis, indexing="ij")
    bowl = surface_facts(a**2 + b**2, 0.2)
    assert bowl["nonconvex_fraction"] == 0 and bowl["local_minima"] == 1
    wavy = surface_facts(a**2 + b**2 + 0.3 * np.cos(12 * a), 0.2)
    assert wavy["nonconvex_fraction"] > 0.2 and wavy["local_minima"] > 1


@pytest.mark.slow  # about 10 s on a shared 2-core CPU: three grids of folded nets
def test_interrupted_grid_resumes_to_the_same_result(tmp_path, tiny_npz, monkeypatch):
    config = LandscapeConfig(
        model="resnet20",
        data=str(tiny_npz),
        train_size=20,
        points_1d=3,
        grid=3,
        normalisation="none",
        batch_size=10,
    )
    _, whole = run_landscape(config, tmp_path / "whole", progress=False)
    real, calls = landscape_module.evaluate_point, {"n": 0}

    def stop_after_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(landscape_module, "evaluate_point", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_landscape(config, tmp_path / "cut", progress=False)
    monkeypatch.setattr(landscape_module, "evaluate_point", real)
    lines = _grid_points(tmp_path / "cut")
    assert len(lines) == 2  # 3 points of the 1-D slice, then 2 of the grid
    _, resumed = run_landscape(config, tmp_path / "cut", resume=True, progress=False)
    assert resumed["surface"] == pytest.approx(whole["surface"])
    assert resumed["line"] == whole["line"]
    assert len(_grid_points(tmp_path / "cut")) == 9


def _grid_points(folder) -> list[dict]:
    """The 2-D grid's points in a study's journal."""
    return [r for r in read_jsonl(folder / "measurements.jsonl") if r["id"].startswith("2d:")]


def test_path_counts_are_binomial_and_routing_keeps_the_forward():
    assert path_counts(27) == pytest.approx(stats.binom.pmf(range(28), 27, 0.5).tolist())
    assert effective_range([0, 1, 8, 1, 0]) == (1, 2)  # 9 of 10 in the shortest window
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    chain = Chain(model)
    routed = [Routed(b) for b in chain.blocks]
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = chain.forward(x, routed)
    torch.testing.assert_close(out, model(x))
    (g_both,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(g_both, g_ref)
    for r in routed:
        r.route = "skip"  # the shortest path: stem, shortcuts, head
    (g_skip,) = torch.autograd.grad(chain.forward(x, routed).sum(), x)
    assert 0 < g_skip.norm() < g_ref.norm() * 10


def test_autocorrelation_and_decay_fits_against_numpy():
    g = np.random.default_rng(0).normal(size=500).cumsum()
    rho = autocorrelation(g, 5)
    c = g - g.mean()
    full = np.correlate(c, c, "full")[len(c) - 1 :]
    reference = full / ((len(c) - np.arange(len(c))) * c.var())  # mean over the n - k pairs
    np.testing.assert_allclose(rho, reference[:6], rtol=1e-10)
    fits = fit_decay([2, 4, 8, 12], [2.0**-d for d in (2, 4, 8, 12)])
    assert fits["exponential"]["slope"] == pytest.approx(-math.log(2))
    depths = [8, 20, 56, 110]
    fits = fit_decay(depths, [d**-0.5 for d in depths])
    assert fits["power"]["slope"] == pytest.approx(-0.5) and fits["power"]["r2"] > 0.999


def test_lesion_command_writes_a_report(tmp_path, tiny_npz, capsys):
    out = tmp_path / "lesion"
    code = main(
        [
            "lesion",
            "resnet20",
            "plain20",
            "--data",
            str(tiny_npz),
            "--max-k",
            "2",
            "--draws",
            "2",
            "--normalisation",
            "none",
            "--out",
            str(out),
            "--report",
        ]
    )
    assert code == 0
    result = json.loads((out / "lesion.json").read_text())
    assert [n["name"] for n in result["nets"]] == ["resnet20", "plain20"]
    assert result["nets"][1]["singles"][3]["deletable"] is False  # plain layer2.0
    report = (out / "report.md").read_text()
    assert "lesion_single.png" in report and "Veit et al. 2016" in report
    assert report.index("Findings") < report.index("lesion_single.png")
    assert (
        main(
            [
                "lesion",
                "resnet20",
                "--pretrained",
                "a",
                "--pretrained",
                "b",
                "--data",
                str(tiny_npz),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


@pytest.mark.slow
@pytest.mark.slow
def test_peer_resnet20_lesion_on_real_data(shared_dir, tmp_path):
    """The intact error of the peer net matches its README; one deletion matches a direct run."""
    weights = shared_dir / "peer" / "cifar-resnets" / PEER20[0]
    config = LesionConfig(
        models=["resnet20"],
        pretrained=[str(weights)],
        data=str(shared_dir / "data" / "cifar10-jpeg.tar.gz"),
        max_k=0,
    )
    _, result = run_lesion(config, tmp_path / "peer", progress=False)
    net = result["nets"][0]
    assert 100 * (1 - net["intact_error"]) == pytest.approx(PEER20[1], abs=0.05)
    subject = load_subject("resnet20", str(weights))
    assert subject.normalisation["mean"] == [0.485, 0.456, 0.406]
    assert all(r["deletable"] for r in net["singles"])
    assert [r["downsampling"] for r in net["singles"]].count(True) == 2


def test_degradation_arms_build_the_identity_starts():
    from resnetlab.experiments.degradation import build_net, display, net_name
    from resnetlab.experiments.variants import check_variants

    dirac = build_net("cifar", "plain-dirac", 8, 10, 3).eval()
    x = torch.rand(1, 16, 32, 32)
    torch.testing.assert_close(dirac.layer1[0](x), x, atol=1e-4, rtol=1e-4)
    scaled = build_net("cifar", "resnet-scale", 20, 10, 3).eval()
    torch.testing.assert_close(scaled.layer1[0](x), x)
    assert (net_name("plain-dirac", 20), display("plain-dirac", 20)) == (
        "plain-dirac20",
        "plain-dirac-20",
    )
    with pytest.raises(ResnetlabError, match="plain-dirac"):
        check_variants(["plain", "dirac"])


def test_demo_trained_part_says_what_it_left_out(tmp_path, tiny_npz, monkeypatch):
    from resnetlab.experiments.demo import DemoConfig, trained_part
    from resnetlab.experiments.runner import run_study

    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    parts, note = trained_part(DemoConfig(data="cifar10", quick=True))
    assert parts == [] and note.startswith("Left out") and "weights" in note
    weights = tmp_path / "home" / "weights"
    weights.mkdir(parents=True)
    torch.save(create_model("resnet20").state_dict(), weights / "resnet20-test.th")
    parts, note = trained_part(DemoConfig(data="synthetic", quick=True))
    assert parts == [] and "not CIFAR-10" in note
    data = tmp_path / "cifar10-tiny.npz"
    data.write_bytes(tiny_npz.read_bytes())
    config = DemoConfig(data=str(data), quick=True)
    parts, note = trained_part(config)
    dirs = [run_study(study, tmp_path / "c" / name).folder for name, study in parts]
    assert [d.name for d in dirs] == ["lesion", "landscape"] and "resnet20-test.th" in note
    assert (dirs[0] / "lesion_single.png").is_file() and (dirs[1] / "landscape_1d.png").is_file()


def test_one_pretrained_value_goes_to_model_names_only(tmp_path):
    from resnetlab.experiments.lesion import _pretrained_for

    config = LesionConfig(models=["resnet56", str(tmp_path)], pretrained=["cifar10"])
    assert _pretrained_for(config) == ["cifar10", None]
    config = LesionConfig(models=["resnet20", "plain20"], pretrained=["a.th", "none"])
    assert _pretrained_for(config) == ["a.th", None]
    assert _pretrained_for(LesionConfig(models=["resnet20"])) == [None]
