"""The Hessian study: products, top eigenvalues, trace and density against the exact Hessian of
a tiny net and against PyHessian on the same net and data; the command end to end (resume,
report, bad input). Tiny nets and images; the peer check reads ``../shared``."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from resnetlab import create_model
from resnetlab.analysis.hessian import (
    LossHessian,
    eigenvalue_density,
    eval_batchnorm,
    hutchinson_trace,
    lanczos,
    top_eigenvalues,
)
from resnetlab.cli import main
from resnetlab.experiments import hessian as hessian_module
from resnetlab.experiments.hessian_findings import findings

pyhessian = pytest.importorskip("pyhessian")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: many small products, which a second thread slows on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_net() -> nn.Sequential:
    """Conv, BatchNorm, ReLU, pooling, linear: 131 parameters."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))  # fmt: skip


@pytest.fixture(scope="module")
def case():
    """A tiny net trained a little (so its top eigenvalue is the largest in magnitude, as for
    real trained nets), its data, and its exact Hessian in float64."""
    torch.manual_seed(0)
    net = tiny_net()
    x, y = torch.randn(48, 3, 6, 6), torch.randint(0, 3, (48,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    double = copy.deepcopy(net).double()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = theta.split([math.prod(s) for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(double, params, (x.double(),)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()
    exact = torch.autograd.functional.hessian(loss, flat)
    return net, x, y, exact, torch.linalg.eigvalsh(exact).numpy()


def test_products_match_the_exact_hessian_in_any_chunking(case):
    net, x, y, exact, _ = case
    v = torch.randn(exact.shape[0], generator=torch.Generator().manual_seed(1))
    want = exact @ v.double()
    for options in ({"batch": 48}, {"batch": 7}, {"batch": 10, "cache": False},
                    {"batch": 16, "channels_last": True}):  # fmt: skip
        hessian = LossHessian(net, x, y, **options)
        got = hessian(v).double()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=str(options))
        assert hessian.products == 1
        assert hessian.loss == pytest.approx(float(F.cross_entropy(net(x), y).detach()), rel=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in eval_batchnorm(copy.deepcopy(net)))


def test_top_eigenvalues_match_eigvalsh(case):
    net, x, y, exact, ev = case
    hessian = LossHessian(net, x, y)
    found = top_eigenvalues(hessian, hessian.dim, 3, tol=1e-6, max_steps=100, seed=0)
    np.testing.assert_allclose(found.values, ev[::-1][:3], rtol=1e-5)
    assert found.converged and found.run.steps < 40
    assert all(b <= 1e-6 * v for v, b in zip(found.values, found.bounds, strict=True))
    for value, vector in zip(found.values, found.vectors.double(), strict=True):
        residual = exact @ vector - value * vector
        assert float(residual.norm()) < 1e-3 * value
    loose = top_eigenvalues(LossHessian(net, x, y), hessian.dim, 1, tol=1e-3, seed=0)
    assert loose.run.steps < found.run.steps  # a looser tolerance stops sooner
    assert abs(loose.values[0] - ev[-1]) <= max(loose.bounds[0], 1e-3 * ev[-1])


def test_trace_matches_the_exact_trace_within_its_standard_error(case):
    net, x, y, exact, _ = case
    hessian = LossHessian(net, x, y)
    want = float(exact.trace())
    plain = hutchinson_trace(hessian, hessian.dim, probes=400, tol=1e-9, seed=3)
    assert plain.probes == 400 and abs(plain.mean - want) < 4 * plain.se
    run = top_eigenvalues(hessian, hessian.dim, 3, tol=1e-4, seed=0).run
    deflated = hutchinson_trace(hessian, hessian.dim, probes=400, tol=1e-9, seed=3, deflate=run)
    assert abs(deflated.mean - want) < 4 * deflated.se
    assert deflated.se < plain.se / 2  # the top directions carried most of the variance
    assert deflated.exact == pytest.approx(float(sum(run.alphas)))
    stopped = hutchinson_trace(hessian, hessian.dim, probes=400, tol=0.05, seed=3, deflate=run)
    assert 10 <= stopped.probes < 400 and stopped.se <= 0.05 * abs(stopped.mean)


def test_same_seed_same_numbers(case):
    net, x, y, _, _ = case
    runs = []
    for seed in (5, 5, 6):
        hessian = LossHessian(net, x, y)
        eig = top_eigenvalues(hessian, hessian.dim, 2, tol=1e-3, seed=seed)
        trace = hutchinson_trace(hessian, hessian.dim, probes=12, tol=1e-9, seed=seed)
        runs.append((eig.values, eig.run.alphas, trace.samples))
    assert runs[0] == runs[1] and runs[0][2] != runs[2][2]


def test_density_integrates_to_one_and_its_mass_sits_on_the_eigenvalues(case):
    net, x, y, exact, ev = case
    hessian = LossHessian(net, x, y)
    full = lanczos(hessian, hessian.dim, hessian.dim, generator=torch.Generator().manual_seed(0))
    nodes, weights = full.quadrature()
    np.testing.assert_allclose(np.sort(nodes), ev, atol=1e-4)
    assert weights.sum() == pytest.approx(1.0)
    grid, values = eigenvalue_density([nodes], [weights], sigma_squared=1e-5)
    step = grid[1] - grid[0]
    assert float(values.sum() * step) == pytest.approx(1.0, abs=1e-6)
    sigma = math.sqrt(1e-5 * max(1.0, ev[-1] - ev[0]))
    near = np.abs(grid[:, None] - ev[None, :]).min(axis=1) <= 5 * sigma + step
    assert float(values[near].sum() * step) > 0.999
    short = [lanczos(hessian, hessian.dim, 20, generator=torch.Generator().manual_seed(s))
             for s in range(4)]  # fmt: skip
    quad = [r.quadrature() for r in short]
    grid, values = eigenvalue_density([q[0] for q in quad], [q[1] for q in quad], points=500)
    assert float(values.sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-6)
    assert max(float(q[0].max()) for q in quad) == pytest.approx(ev[-1], rel=1e-5)
    mean = np.mean([float(q[0] @ q[1]) for q in quad])  # E[qᵀHq] = tr(H) / n over random q
    assert mean == pytest.approx(float(exact.trace()) / len(ev), rel=0.5)


@pytest.fixture()
def eig_shim(monkeypatch):
    """PyHessian's density calls ``torch.eig``, removed from torch: the symmetric solver."""

    def eig(matrix: torch.Tensor, eigenvectors: bool = False):
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    monkeypatch.setattr(torch, "eig", eig, raising=False)


def test_against_pyhessian_on_the_same_net_and_data(case, eig_shim):
    net, x, y, _, ev = case
    reference = pyhessian.hessian(copy.deepcopy(net), F.cross_entropy, data=(x, y), cuda=False)
    torch.manual_seed(0)
    theirs, _ = reference.eigenvalues(maxIter=1000, tol=1e-7, top_n=2)
    hessian = LossHessian(net, x, y)
    ours = top_eigenvalues(hessian, hessian.dim, 2, tol=1e-6, seed=0)
    np.testing.assert_allclose(ours.values, theirs, rtol=1e-4)
    torch.manual_seed(0)
    samples = reference.trace(maxIter=300, tol=1e-9)
    their_mean, their_se = np.mean(samples), np.std(samples, ddof=1) / math.sqrt(len(samples))
    trace = hutchinson_trace(hessian, hessian.dim, probes=300, tol=1e-9, seed=1, deflate=ours.run)
    assert abs(trace.mean - their_mean) < 4 * math.hypot(trace.se, their_se)
    torch.manual_seed(0)
    nodes, weights = reference.density(iter=30, n_v=1)
    assert sum(weights[0]) == pytest.approx(1.0, abs=1e-4)
    ours_run = lanczos(hessian, hessian.dim, 30, generator=torch.Generator().manual_seed(0))
    assert max(nodes[0]) == pytest.approx(ev[-1], rel=1e-3)
    assert ours_run.quadrature()[0].max() == pytest.approx(max(nodes[0]), rel=1e-3)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """A CIFAR-shaped set at 8×8 pixels (the CIFAR nets pool globally): 10 classes."""
    path = tmp_path_factory.mktemp("data") / "small.npz"
    g = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 10), ("test", 10)):
        arrays[f"{split}_images"] = g.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def _argv(data, out, *more):
    return ["hessian", "resnet20", "plain20", "--data", str(data), "--eval-size", "10",
            "--eigenvalues", "2", "--steps", "6", "--max-steps", "12", "--tol", "0.05",
            "--probes", "4", "--batch-size", "5", "--normalisation", "none", "--threads", "1",
            "--out", str(out), *more]  # fmt: skip


def test_command_runs_resumes_and_reports(tmp_path, small_npz, monkeypatch, capsys):
    out = tmp_path / "hessian"
    assert main(_argv(small_npz, out, "--report")) == 0
    result = json.loads((out / "hessian.json").read_text())
    nets = result["nets"]
    assert [(n["name"], n["skips"], n["depth"]) for n in nets] == [
        ("resnet20", True, 20), ("plain20", False, 20)
    ]  # fmt: skip
    for net in nets:
        assert len(net["eigenvalues"]) == 2 and net["eigenvalues"][0] >= net["eigenvalues"][1]
        assert net["lanczos_steps"] >= 6 and net["probes"] <= 4 and net["trace_se"] > 0
        assert sum(net["weights"][0]) == pytest.approx(1.0, abs=1e-6)
    assert "Plain sharper than residual at depth 20" in result["verdict"][0]
    report = (out / "report.md").read_text()
    assert "hessian_density.png" in report and "Yao" in report and "hessian.csv" in report
    assert (out / "hessian_density.png").stat().st_size > 0
    capsys.readouterr()
    journal = (out / "measurements.jsonl").read_text().splitlines()
    (out / "measurements.jsonl").write_text(journal[0] + "\n")  # as if cut after one net
    calls = []
    real = hessian_module.measure_net
    monkeypatch.setattr(hessian_module, "measure_net",
                        lambda s, *a: calls.append(s.name) or real(s, *a))  # fmt: skip
    assert main(_argv(small_npz, out, "--resume")) == 0
    assert calls == ["plain20"]
    again = json.loads((out / "hessian.json").read_text())["nets"]
    assert again[0] == nets[0] and again[1]["eigenvalues"] == nets[1]["eigenvalues"]
    assert main(["report", str(out)]) == 0


@pytest.mark.parametrize(
    ("more", "words"),
    [
        (["--eigenvalues", "0"], "--eigenvalues"),
        (["--tol", "0"], "--tol"),
        (["--max-steps", "4"], "--max-steps"),
        (["--pretrained", "a", "--pretrained", "b", "--pretrained", "c"], "--pretrained values"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, small_npz, capsys, more, words):
    try:
        code = main(_argv(small_npz, tmp_path / "bad", *more))
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_unknown_model_is_a_one_line_error(tmp_path, small_npz, capsys):
    argv = ["hessian", "resnet21", "--data", str(small_npz), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet21" in err and len(err.splitlines()) == 1


def _net(label, skips, depth, top, trace, se=1.0):
    return {"name": label, "label": label, "skips": skips, "depth": depth, "trained": True,
            "eigenvalues": [top], "trace": trace, "trace_se": se,
            "nodes": [[0.0, top]], "weights": [[0.999, 0.001]]}  # fmt: skip


def test_findings_compare_twins_and_depths():
    nets = [_net("resnet20", True, 20, 10, 100), _net("plain20", False, 20, 30, 300),
            _net("resnet56", True, 56, 12, 120), _net("plain56", False, 56, 90, 900)]  # fmt: skip
    found = findings(nets)
    assert [f["holds"] for f in found] == [True, True, True, True]
    assert "×3" in found[0]["verdict"] and "×3" in found[2]["measured"]
    close = [_net("resnet20", True, 20, 10, 100, se=50), _net("plain20", False, 20, 11, 110, 50)]
    assert findings(close)[0]["holds"] is None  # the traces are within two standard errors
    mixed = findings([_net("resnet56", True, 56, 10, 600), _net("plain56", False, 56, 30, 500)])
    assert mixed[0]["holds"] is False and mixed[0]["relation"].startswith("Mixed")
    alone = findings([_net("resnet20", True, 20, 10, 100), _net("resnet56", True, 56, 20, 150)])
    assert alone[0]["holds"] is None and "no plain and residual" in alone[0]["measured"]
    assert alone[1]["holds"] is None and "×2" in alone[1]["measured"]


@pytest.mark.slow
def test_peer_resnet20_against_pyhessian_on_real_images(shared_dir):
    """The trained peer ResNet-20 on 64 CIFAR-10 JPEG test images: ours and PyHessian's top
    eigenvalue at a tight tolerance agree."""
    from resnetlab.experiments.trained import load_split

    weights = shared_dir / "peer" / "cifar-resnets" / "resnet20-12fca82f.th"
    model = create_model("resnet20", pretrained=str(weights)).eval()
    data = str(shared_dir / "data" / "cifar10-jpeg.tar.gz")
    x, y, _ = load_split(data, "test", 64, 0, {"mean": [0.485, 0.456, 0.406],
                                               "std": [0.229, 0.224, 0.225]})  # fmt: skip
    hessian = LossHessian(model, x, y, channels_last=True)
    ours = top_eigenvalues(hessian, hessian.dim, 1, tol=1e-4, max_steps=60, seed=0)
    reference = pyhessian.hessian(copy.deepcopy(model), F.cross_entropy, data=(x, y), cuda=False)
    torch.manual_seed(0)
    theirs, _ = reference.eigenvalues(maxIter=200, tol=1e-5)
    assert ours.converged and ours.values[0] == pytest.approx(theirs[0], rel=2e-3)
