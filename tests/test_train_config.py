"""Training settings: recipes, validation, schedules at chosen iterations, optimiser groups, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from resnetlab.errors import ResnetlabError
from resnetlab.models import CifarResNet
from resnetlab.train import RECIPES, TrainConfig, build_optimizer, lr_at, recipe_config
from resnetlab.train.optim import set_lr


def test_he2015_recipe_is_the_papers():
    c = recipe_config("he2015-cifar", model="resnet56")
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size) == ("sgd", 0.1, 0.9,
                                                                             1e-4, 128)  # fmt: skip
    assert c.max_iters == 64000 and c.gamma == 0.1 and c.milestones_at(64000) == (32000, 48000)
    assert c.val_size == 5000 and c.pad == 4 and c.flip and c.normalisation == "per-pixel-mean"
    assert c.warmup_iters == 0  # only 110 layers and deeper warm up
    deep = recipe_config("he2015-cifar", model="resnet110")
    assert (deep.warmup_iters, deep.warmup_lr, deep.warmup) == (400, 0.01, "constant")
    assert recipe_config("he2015-cifar", model="resnet110", warmup_iters=0).warmup_iters == 0
    assert "he2015-cifar" in RECIPES


def test_paper_multistep_schedule_at_its_iterations():
    c = recipe_config("he2015-cifar", model="resnet20")
    expected = {0: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 63999: 0.001}
    for step, lr in expected.items():
        assert lr_at(c, step, 64000) == pytest.approx(lr), step


def test_resnet110_warm_up_then_the_main_rate():
    c = recipe_config("he2015-cifar", model="resnet110")
    assert [lr_at(c, s, 64000) for s in (0, 399, 400, 31999, 32000)] == pytest.approx(
        [0.01, 0.01, 0.1, 0.1, 0.01]
    )


def test_linear_warm_up_ramps_to_the_schedule():
    c = TrainConfig(lr=0.1, warmup_iters=10, warmup_lr=0.0, schedule="constant", max_iters=100)
    assert [lr_at(c, s, 100) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.05, 0.1, 0.1])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_cosine_and_onecycle_match_torch(schedule):
    total = 200
    c = TrainConfig(lr=0.4, schedule=schedule, max_iters=total, min_lr=0.0, onecycle_pct=0.3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4, momentum=0.9)
    if schedule == "cosine":
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total,
                                                  pct_start=0.3)  # fmt: skip
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = [lr_at(c, s, total) for s in range(total)]
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert max(ours) == pytest.approx(0.4)


def test_no_decay_groups_and_outside_groups_follow_the_schedule():
    model = CifarResNet(8)
    c = TrainConfig(no_decay_bn_bias=True, weight_decay=5e-4)
    opt = build_optimizer(c, model)
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    groups = [{"params": model.fc.parameters(), "lr": 1.0},
              {"params": model.layer1.parameters()}]  # fmt: skip
    opt = build_optimizer(c.replace(lr=0.1), model, groups)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]


def test_lr_tensor_mode_updates_in_place():
    model = CifarResNet(8)
    opt = build_optimizer(TrainConfig(lr=0.1), model, lr_tensor_device=torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and opt.defaults["fused"]
    set_lr(opt, 0.1)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.01)


def test_fused_tensor_lr_step_equals_the_plain_step():
    # The CUDA-graph path (fused SGD, lr as a tensor) gives the eager path's update.
    torch.manual_seed(0)
    a, b = CifarResNet(8), CifarResNet(8)
    b.load_state_dict(a.state_dict())
    c = TrainConfig(lr=0.1)
    opt_a = build_optimizer(c, a)
    opt_b = build_optimizer(c, b, lr_tensor_device=torch.device("cpu"))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for opt, m in ((opt_a, a), (opt_b, b)):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "word"),
    [({"optimizer": "adam"}, "adamw"), ({"schedule": "step"}, "schedule"), ({"lr": -1}, "lr"),
     ({"milestones": (5, 2)}, "milestones"), ({"ema": 1.5}, "ema"),
     ({"max_iters": 10, "epochs": 2}, "epochs"), ({"batch_size": 0}, "batch_size"),
     ({"normalisation": "zscore"}, "normalisation"), ({"cuda_graphs": "yes"}, "cuda_graphs")],
)  # fmt: skip
def test_bad_settings_name_the_field(changes, word):
    with pytest.raises(ResnetlabError, match=word):
        TrainConfig(**changes)


def test_config_round_trips_and_refuses_unknown_keys():
    c = recipe_config("he2015-cifar", model="resnet32", lr=0.05)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ResnetlabError, match="Did you mean max_iters"):
        TrainConfig.from_dict({"max_iter": 5})
    with pytest.raises(ResnetlabError, match="recipe"):
        recipe_config("he2016-cifar")


def test_epochs_convert_to_iterations():
    assert TrainConfig(max_iters=None, epochs=2.5).total_iters(351) == 878
    assert TrainConfig(max_iters=100).total_iters(351) == 100


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnetlab.cli", "train", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_cli_bad_values_are_one_line_and_exit_2(tmp_path):
    out = str(tmp_path / "r")
    for args, word in [(("--lr", "fast"), "--lr"), (("--schedule", "cosin"), "cosine"),
                       (("--recipe", "he2014"), "recipe"), (("--precision", "fp8"), "bf16"),
                       (("--ema", "1.5"), "--ema"), (("--augment", "true"), "true"),
                       (("--model", "resnet21"), "resnet2")]:  # fmt: skip
        proc = cli("--out", out, "--data", str(tmp_path / "missing.npz"), *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0], proc.stderr
    assert not (tmp_path / "r" / "last.pt").exists()


def test_cli_overrides_apply_on_top_of_the_recipe():
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import parse_overrides

    args = build_parser().parse_args(
        ["train", "--out", "x", "--recipe", "he2015-cifar", "--max-iters", "500",
         "--milestones", "200,400", "--normalisation", "0.5,0.5,0.5/0.2,0.2,0.2",
         "--no-cuda-graphs", "--model-option", "shortcut=B", "--val-size", "0.1"]
    )  # fmt: skip
    values = parse_overrides(args)
    c = recipe_config(args.recipe, **values)
    assert c.max_iters == 500 and c.milestones == (200, 400) and c.lr == 0.1
    assert c.cuda_graphs is False and c.model_options == {"shortcut": "B"} and c.val_size == 0.1
    assert c.normalisation == {"mean": [0.5] * 3, "std": [0.2] * 3}
