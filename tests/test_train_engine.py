"""The training loop on small synthetic data: learning, run folder, hooks, NaN stop, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from resnetlab.data import DataBundle, ImageSet
from resnetlab.errors import ResnetlabError
from resnetlab.models import CifarResNet
from resnetlab.train import (
    Callback,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    load_checkpoint,
    train,
)


def synthetic(n: int, classes: int, size: int, seed: int) -> ImageSet:
    """Noise images where class k has a bright patch at a class-specific place (learnable)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 120, (n, 3, size, size), generator=g, dtype=torch.uint8)
    half = size // 2
    for k in range(classes):
        r, c = divmod(k, 2)
        images[labels == k, k % 3, r * half : (r + 1) * half, c * half : (c + 1) * half] = 250
    return ImageSet(images, labels, [f"c{k}" for k in range(classes)], f"synthetic seed {seed}")


def bundle(n: int = 192, classes: int = 4, size: int = 8) -> DataBundle:
    sets = [synthetic(m, classes, size, seed) for seed, m in enumerate((n, 64, 64))]
    names = sets[0].classes
    return DataBundle(*sets, names, 3, (size, size), "synthetic", "synthetic patches")


def config(tmp_path, **changes) -> TrainConfig:
    values = dict(model="resnet20", batch_size=32, lr=0.05, max_iters=12, milestones=(),
                  eval_every=6, checkpoint_every=6, log_every=3, out_dir=str(tmp_path / "run"),
                  progress=False, seed=1)  # fmt: skip
    return TrainConfig(**{**values, **changes})


def test_learns_a_synthetic_task_and_writes_the_run_folder(tmp_path):
    result = train(config(tmp_path, max_iters=30, eval_every=15), data=bundle())
    # 4 classes: chance is 75 % error.
    assert result.metrics["test_error"] < 0.3
    assert result.metrics["val_error"] < 0.3
    assert result.steps == 30
    run = tmp_path / "run"
    for name in ("config.json", "run.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(3, 31, 3))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30]
    assert all(r["images_per_s"] > 0 for r in records if r["kind"] == "train")
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("kind,step,epoch,lr,loss,error")
    assert len(csv_lines) == len(records) + 1
    facts = json.loads((run / "run.json").read_text())
    assert facts["status"] == "completed"
    assert facts["data"]["sizes"] == {"train": 192, "val": 64, "test": 64}
    assert facts["model"]["name"] == "resnet20" and facts["versions"]["torch"] == torch.__version__
    assert json.loads((run / "config.json").read_text())["resolved"]["max_iters"] == 30
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 30 and set(ckpt) == {  # what resume, predict and evaluate read
        "step", "model", "optimizer", "elapsed_s", "ema", "meters", "best_val_error", "rng",
        "config", "preprocess", "classes"}  # fmt: skip
    assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}


def test_evaluate_reports_error_and_accuracy(tmp_path):
    from resnetlab.data import make_loader

    model = CifarResNet(8, num_classes=4)
    loader = make_loader(synthetic(50, 4, 8, 0), 16, train=False)
    result = evaluate(model, loader)
    assert result["n"] == 50
    assert result["error"] == pytest.approx(1.0 - result["accuracy"])
    assert 0.0 <= result["error"] <= 1.0 and result["loss"] > 0
    assert model.training  # evaluate restores the mode it found


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    train(config(tmp_path, max_iters=3, eval_every=3), data=bundle())
    with pytest.raises(ResnetlabError, match="--resume"):
        train(config(tmp_path, max_iters=3), data=bundle())


def test_resume_refuses_a_changed_setting(tmp_path):
    train(config(tmp_path, max_iters=3, eval_every=3), data=bundle())
    with pytest.raises(ResnetlabError, match="lr"):
        train(config(tmp_path, max_iters=6, lr=0.2, resume=True), data=bundle())


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    class Poison(Callback):
        def on_step(self, state):
            if state.step == 7:  # corrupt the weights after the checkpoint at step 6
                with torch.no_grad():
                    state.model.fc.weight.fill_(float("nan"))

    cfg = config(tmp_path, log_every=1, checkpoint_every=6, eval_every=100)
    with pytest.raises(TrainingDiverged, match="at step 8") as info:
        train(cfg, data=bundle(), callbacks=[Poison()])
    assert "last good checkpoint" in str(info.value)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "diverged" in facts["status"]


def test_a_huge_lr_diverges_with_a_clear_message(tmp_path):
    cfg = config(tmp_path, lr=1e12, max_iters=30, log_every=2, checkpoint_every=100)
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf at step \d+ \(lr 1e\+12\)"):
        train(cfg, data=bundle())
    assert not (tmp_path / "run" / "last.pt").exists()


def test_hooks_param_groups_and_step_metrics(tmp_path):
    seen: dict[str, list] = {"eval": [], "log": [], "start": []}

    class Watch(Callback):
        def on_start(self, state):
            seen["start"].append(state.step)
            state.model.layer1.requires_grad_(False)  # a frozen phase

        def on_step(self, state):
            if state.step == 6:
                state.model.layer1.requires_grad_(True)  # unfreeze later
            if state.step == 9:
                state.stop = True

        def on_log(self, state, record):
            seen["log"].append(record)

        def on_eval(self, state, record):
            seen["eval"].append(record["step"])

    def groups(model):
        head = list(model.fc.parameters())
        rest = [p for p in model.parameters() if all(p is not h for h in head)]
        return [{"params": rest}, {"params": head, "lr": 0.5}]

    def margin(logits, y):
        return {"logit_max": logits.max(1).values.mean()}

    model = CifarResNet(8, num_classes=4)
    frozen_before = model.layer1[0].conv1.weight.detach().clone()
    result = train(config(tmp_path, eval_every=3), model=model, data=bundle(),
                   callbacks=[Watch()], param_groups=groups, step_metrics=margin)  # fmt: skip
    assert result.steps == 9  # the hook stopped the run early
    assert seen["start"] == [0] and seen["eval"] == [3, 6, 9]
    assert all("logit_max" in r for r in seen["log"])
    assert seen["log"][0]["lr"] == pytest.approx(0.05)
    assert not torch.equal(model.layer1[0].conv1.weight, frozen_before)  # trained after unfreeze
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 9
    assert [g["base_lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.05, 0.5]


def test_frozen_parameters_stay_put(tmp_path):
    model = CifarResNet(8, num_classes=4)
    model.layer1.requires_grad_(False)
    before = {k: v.clone() for k, v in model.layer1.named_parameters()}
    train(config(tmp_path, max_iters=4, eval_every=4), model=model, data=bundle())
    assert all(torch.equal(before[k], v) for k, v in model.layer1.named_parameters())


def test_ctrl_c_saves_and_resume_finishes_like_an_uninterrupted_run(tmp_path):
    class CtrlC(Callback):
        def on_step(self, state):
            if state.step == 5:
                os.kill(os.getpid(), signal.SIGINT)

    reference = train(config(tmp_path / "a", ema=0.9), data=bundle())
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b", ema=0.9), data=bundle(), callbacks=[CtrlC()])
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["step"] == 5
    resumed = train(config(tmp_path / "b", ema=0.9, resume=True), data=bundle())
    a = load_checkpoint(reference.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    losses = [
        [r["loss"] for r in map(json.loads, (p / "run" / "metrics.jsonl").open()) if "loss" in r]
        for p in (tmp_path / "a", tmp_path / "b")
    ]
    assert losses[0] == losses[1]


def test_epochs_are_converted_to_iterations(tmp_path):
    result = train(config(tmp_path, max_iters=None, epochs=1.5, eval_every=100), data=bundle())
    assert result.steps == 9  # 192 images / batch 32 = 6 batches per epoch


def test_batch_too_large_is_a_clear_error(tmp_path):
    with pytest.raises(ResnetlabError, match="batch"):
        train(config(tmp_path, batch_size=1000), data=bundle())


def test_activation_checkpointing_trains_the_same_and_is_recorded(tmp_path):
    plain = train(config(tmp_path / "a", max_iters=6, eval_every=3), data=bundle())
    first = train(config(tmp_path / "b", max_iters=3, eval_every=3,
                         activation_checkpointing=True), data=bundle())  # fmt: skip
    assert first.model.grad_checkpointing
    saved = json.loads((tmp_path / "b" / "run" / "config.json").read_text())
    assert saved["activation_checkpointing"] is True
    # Resuming may switch it (the same math); the steps match a run that never used it.
    resumed = train(config(tmp_path / "b", max_iters=6, eval_every=3, resume=True),
                    data=bundle())  # fmt: skip
    a, b = load_checkpoint(plain.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_needs_a_model_that_has_it(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 4))  # fmt: skip
    with pytest.raises(ResnetlabError, match="set_grad_checkpointing"):
        train(config(tmp_path, activation_checkpointing=True), model=model, data=bundle())


def test_activation_checkpointing_turns_auto_cuda_graphs_off_and_refuses_explicit_ones():
    from resnetlab.cli import build_parser
    from resnetlab.cli.train import parse_overrides
    from resnetlab.models import create_model
    from resnetlab.train.distributed import Dist
    from resnetlab.train.prepare import make_plan

    args = build_parser().parse_args(["train", "--out", "x", "--activation-checkpointing"])
    assert parse_overrides(args) == {"activation_checkpointing": True}
    cuda = Dist(device=torch.device("cuda"))  # planning only: nothing runs on it
    model = create_model("resnet20")
    auto = TrainConfig(precision="fp32")
    assert make_plan(auto, cuda, model, hooked=False).cuda_graphs
    on = auto.replace(activation_checkpointing=True)
    assert not make_plan(on, cuda, model, hooked=False).cuda_graphs
    with pytest.raises(ResnetlabError, match="activation_checkpointing"):
        make_plan(on.replace(cuda_graphs=True), cuda, model, hooked=False)
