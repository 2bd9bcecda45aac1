"""``--seeds N`` in the studies that sample (lesion, loss landscape, paths, shattered): each seed
its own measurements, equal to a one-seed run at that seed where the seed draws everything;
means with 95 % intervals; verdicts decided on the intervals (constructed numbers), naming
seeds that disagree; a run from before ``--seeds`` still resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resnetlab import create_model
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.landscape import LandscapeConfig, run_landscape
from resnetlab.experiments.landscape_views import seed_lines
from resnetlab.experiments.lesion import LesionConfig, run_lesion
from resnetlab.experiments.lesion_verdict import verdict_over_seeds
from resnetlab.experiments.paths import PathsConfig, range_verdict, run_paths
from resnetlab.experiments.shattered import ShatteredConfig, decay_summary, run_shattered
from resnetlab.models import model_info
from resnetlab.runfolder import read_csv, read_jsonl
from resnetlab.weights import catalog


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Weights of a resnet20, so the net studied is the same whatever the seed."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    return str(path)


def _without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_lesion_seeds_are_one_seed_runs_side_by_side(tmp_path, tiny_npz, weights):
    base = dict(models=["resnet20"], pretrained=[weights], data=str(tiny_npz), max_k=2,
                draws=2, eval_size=20, normalisation="none", batch_size=20)  # fmt: skip
    _, two = run_lesion(LesionConfig(**base, seeds=2), tmp_path / "two", progress=False)
    _, alone = run_lesion(LesionConfig(**base, seed=1), tmp_path / "one", progress=False)
    assert [n["seed"] for n in two["nets"]] == [0, 1]
    assert _without(two["nets"][1], "seed") == alone["nets"][0]  # seed 1 draws what it did alone
    assert two["nets"][0]["draws"] != two["nets"][1]["draws"]
    ids = [r["id"] for r in read_jsonl(tmp_path / "two" / "measurements.jsonl")]
    assert ids == ["net:0:seed0", "net:0:seed1"]
    rows = read_csv(tmp_path / "two" / "lesion_seeds.csv")
    intact = next(r for r in rows if r["quantity"] == "intact error")
    errors = [n["intact_error"] for n in two["nets"]]
    assert float(intact["mean"]) == pytest.approx(np.mean(errors)) and intact["seeds"] == "2"
    assert {r["seed"] for r in read_csv(tmp_path / "two" / "lesion_single.csv")} == {"0", "1"}
    assert "2 seeds" in " ".join(two["summary"])
    caption = json.loads((tmp_path / "two" / "lesion.json").read_text())["captions"]
    assert "lowest to the highest seed" in caption["lesion_k.png"]


def test_paths_seeds_are_one_seed_runs_side_by_side(tmp_path, tiny_npz, weights):
    base = dict(model="resnet20", pretrained=weights, data=str(tiny_npz), eval_size=2, draws=1,
                normalisation="none")  # fmt: skip
    _, two = run_paths(PathsConfig(**base, seeds=2), tmp_path / "two", progress=False)
    _, alone = run_paths(PathsConfig(**base, seed=1), tmp_path / "one", progress=False)
    assert [(n["net"].endswith("(seed 1)"), n["seed"]) for n in two["nets"]] == [
        (False, 0), (False, 0), (False, 1), (True, 1)]  # fmt: skip
    assert [_without(n, "seed") for n in two["nets"][2:]] == alone["nets"]
    rows = read_csv(tmp_path / "two" / "paths_seeds.csv")
    ends = next(r for r in rows if r["quantity"] == "range end")
    assert float(ends["mean"]) == pytest.approx(np.mean([n["range"][1] for n in two["nets"][::2]]))


def test_landscape_seeds_draw_their_own_directions(tmp_path, tiny_npz):
    config = LandscapeConfig(model="resnet20", data=str(tiny_npz), train_size=10, points_1d=3,
                             grid=3, normalisation="none", batch_size=10, seeds=2)  # fmt: skip
    _, result = run_landscape(config, tmp_path / "run", progress=False)
    folder = tmp_path / "run"
    assert (folder / "directions-seed0.pt").is_file() and (folder / "directions-seed1.pt").is_file()
    losses = [[p["loss"] for p in line] for line in result["lines"]]
    assert losses[0] != losses[1] and losses[0][1] == losses[1][1]  # same centre, other slopes
    assert [p["loss"] for p in result["line"]] == pytest.approx(np.mean(losses, axis=0))
    assert len(result["surfaces"]) == 2 and "landscape_seeds.csv" in {p.name for p in
                                                                      folder.iterdir()}  # fmt: skip
    assert len(read_jsonl(folder / "measurements.jsonl")) == 2 * (3 + 9)


def test_shattered_takes_the_seeds_group_and_gives_intervals(tmp_path):
    config = ShatteredConfig(depths=[2, 4], kinds=["mlp-plain", "mlp-resnet"], points=16,
                             mlp_width=8, seeds=3)  # fmt: skip
    _, result = run_shattered(config, tmp_path / "run", progress=False)
    rows = read_csv(tmp_path / "run" / "shattered_seeds.csv")
    assert [(r["kind"], r["depth"], r["seeds"]) for r in rows] == [
        ("mlp-plain", "2", "3"), ("mlp-plain", "4", "3"), ("mlp-resnet", "2", "3"),
        ("mlp-resnet", "4", "3")]  # fmt: skip
    assert all(float(r["lo"]) <= float(r["mean"]) <= float(r["hi"]) for r in rows)
    assert ShatteredConfig().seeds == 2, "its own default, kept"
    with pytest.raises(ResnetlabError, match=r"seeds \(--seeds\) must be >= 1"):
        run_shattered(ShatteredConfig(seeds=0), tmp_path / "none", progress=False)


def _net(name: str, skips: bool, increases: list[float]) -> dict:
    """A lesion record with these single-block increases (no downsampling block)."""
    singles = [{"block": f"layer1.{i}", "index": i, "downsampling": False, "deletable": True,
                "increase": v, "error": 0.1 + v} for i, v in enumerate(increases)]  # fmt: skip
    return {"name": name, "label": name, "skips": skips, "intact_error": 0.1,
            "singles": singles}  # fmt: skip


def _lesion_words(res_worst: list[float], plain_best: list[float]) -> list[str]:
    config = LesionConfig(seeds=len(res_worst), eval_size=None)
    runs = [[_net("resnet20", True, [0.0, w]) for w in res_worst],
            [_net("plain20", False, [b, 0.9]) for b in plain_best]]  # fmt: skip
    return verdict_over_seeds(config, runs)


def test_lesion_verdict_is_decided_on_the_intervals():
    holds = _lesion_words([0.02, 0.03, 0.025], [0.50, 0.60, 0.55])
    assert "holds (the 95 % interval stays within 5 points)" in holds[4]
    assert "far more" in holds[5] and "disagree" not in " ".join(holds)
    # Means of 4.3 points (below 5) but a seed at 8: the interval reaches above 5 points.
    mixed = _lesion_words([0.02, 0.08, 0.03], [0.50, 0.04, 0.55])
    assert "does not hold as stated" in mixed[4] and "1 of 3 exceed 5 points" in mixed[4]
    assert "which includes 0" in mixed[5] and "the seeds disagree" in mixed[5]
    assert "does not show here" in mixed[5]


def test_paths_verdict_is_decided_on_the_interval_of_the_range_end():
    def nets(ends: list[int]) -> list[dict]:
        return [{"range": [2, e], "peak": 5, "blocks": 27, "typical": 13.5,
                 "layers_per_block": 2} for e in ends]  # fmt: skip

    assert "shorter than the typical path, as the paper" in range_verdict("r", nets([9, 10, 11]))
    wide = range_verdict("r", nets([9, 10, 14]))  # mean 11 < 13.5, interval up to 17
    assert "not shown shorter" in wide and "1 of 3 reach the typical path" in wide


def test_shattered_verdict_is_decided_on_the_interval_of_the_difference():
    config = ShatteredConfig(depths=[8, 20], kinds=["plain", "resnet"], seeds=3)

    def rows(plain: list[float], res: list[float]) -> list[dict]:
        found = []
        for kind, deep in (("plain", plain), ("resnet", res)):
            for s, value in enumerate(deep):
                found += [{"kind": kind, "depth": 8, "seed": s, "rho1": 0.9},
                          {"kind": kind, "depth": 20, "seed": s, "rho1": value}]  # fmt: skip
        return found

    clear = decay_summary(rows([0.01, 0.02, 0.015], [0.50, 0.60, 0.55]), config)[2][-1]
    assert "ResNet minus plain, difference +0.535" in clear and "as the paper predicts" in clear
    torn = decay_summary(rows([0.01, 0.70, 0.02], [0.50, 0.30, 0.60]), config)[2][-1]
    assert "which includes 0" in torn and "the seeds disagree" in torn
    assert "does not show here" in torn


def test_landscape_words_say_whether_the_centre_bends_down():
    flat = {"centre_loss": 0.1, "edge_mean_loss": 2.0, "nonconvex_fraction": 0.0,
            "central_nonconvex_fraction": 0.0, "local_minima": 1}  # fmt: skip
    assert "no seed finds negative curvature" in seed_lines([1.0, 1.2], [flat, flat], 5)[1]
    bent = [flat | {"central_nonconvex_fraction": v} for v in (0.3, 0.4, 0.35)]
    assert "bends down (the 95 % interval of its share excludes 0)" in seed_lines(
        [1.0] * 3, bent, 5)[1]  # fmt: skip
    torn = seed_lines([1.0, 1.1], [flat, flat | {"central_nonconvex_fraction": 0.4}], 5)[1]
    assert "cannot tell" in torn and "1 of 2 find none" in torn


def test_a_run_from_before_seeds_resumes_and_other_seeds_are_refused(tmp_path, tiny_npz):
    config = dict(models=["resnet20"], data=str(tiny_npz), max_k=0, eval_size=10,
                  normalisation="none")  # fmt: skip
    folder, first = run_lesion(LesionConfig(**config), tmp_path / "run", progress=False)
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_without(saved, "seeds")))  # as before
    _, again = run_lesion(LesionConfig(**config), folder, resume=True, progress=False)
    assert again == first and json.loads((folder / "config.json").read_text())["seeds"] == 1
    with pytest.raises(ResnetlabError, match=r"other settings \(seeds\)"):
        run_lesion(LesionConfig(**config, seeds=2), folder, resume=True, progress=False)


def test_a_best_of_five_figure_is_named_so():
    (figure,) = [p for p in model_info("resnet110").published if "CIFAR-10" in p.metric]
    assert figure.value == 6.43 and "best of 5 runs" in figure.metric
    assert figure.source == catalog.HE2015_T6_BEST and "6.61 ± 0.16" in str(figure)
    assert all("best" not in p.metric for p in model_info("resnet56").published)
