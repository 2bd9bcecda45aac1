"""Fine-tuning on the one training engine: a new head, then fastai's two-phase recipe.

Phase 1 trains the head with the backbone frozen (``head_epochs``); phase 2 unfreezes (all, or
down to a stage) with discriminative learning rates. Each phase is one engine run in a sub-folder
(``phase1-head``, ``phase2-full``) with its own resumable checkpoint; a hook measures the full
metric set on validation after every epoch (the one validation pass), keeps the best model by
``monitor`` and stops early. A phase's checkpoint is deleted once the next phase has saved its
own, and the last one when the run is finished (``keep_checkpoints`` keeps them all).
The run folder gets the model (``model.safetensors``, ``model.pt``), ``model_card.json``, the
merged ``metrics.jsonl``/``metrics.csv``, plots and ``report.html``/``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runfolder
from ..console import say
from ..data import ImageSet, make_loader
from ..errors import ResnetlabError
from ..evaluation.decision import check_two_classes
from ..evaluation.logits import loader_logits
from ..evaluation.metrics import classification_metrics
from ..files import RunLock, write_json, write_text_atomic
from ..runfolder import append_jsonl, read_jsonl
from ..train import Callback, TrainConfig, save_checkpoint, train
from ..train.prepare import check_classes
from ..transfer import freeze, param_groups, resolve_stages, unfreeze
from ..weights import load_checkpoint
from . import outputs, prepare
from .build import build_model, weights_source
from .options import (
    OPTIONS_FILE,
    PHASES,
    FinetuneOptions,
    FinetuneResult,
    engine_settings,
    resume_settings,
    saved_options,
)

__all__ = ["FinetuneOptions", "FinetuneResult", "finetune", "phase_plan", "saved_options"]


class Tracker(Callback):
    """After each evaluation: the full metric set on validation, the best model by ``monitor``
    (``best_model.pt`` + ``best.json`` in the run folder) and early stopping.

    Its records (``val_metrics.jsonl``) are replayed on resume, so nothing is lost or doubled.
    """

    def __init__(
        self,
        run_dir: Path,
        phase: str,
        loader: Any,
        classes: list[str],
        monitor: str,
        patience: int | None,
        epoch_offset: float,
    ) -> None:
        self.run_dir, self.phase, self.loader, self.classes = run_dir, phase, loader, classes
        self.monitor, self.patience, self.offset = monitor, patience, epoch_offset
        self.path = run_dir / "val_metrics.jsonl"

    def _better(self, value: float, best: float | None) -> bool:
        if value != value:  # NaN (e.g. ROC-AUC with one class present)
            return False
        return best is None or (value < best if self.monitor == "loss" else value > best)

    def on_start(self, state: Any) -> None:

        keep = [
            r
            for r in read_jsonl(self.path)
            if PHASES.index(r["phase"]) < PHASES.index(self.phase)
            or (r["phase"] == self.phase and r["step"] <= state.step)
        ]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        self.best, self.since = None, 0
        for r in keep:
            if self._better(r[self.monitor], self.best):
                self.best, self.since = r[self.monitor], 0
            else:
                self.since = self.since + 1 if r["phase"] == self.phase else 0

    def on_eval(self, state: Any, record: dict[str, Any]) -> None:

        logits, labels = loader_logits(state.model, self.loader)
        metrics = classification_metrics(logits, labels, self.classes)
        row = {
            "phase": self.phase,
            "step": state.step,
            "epoch": round(self.offset + state.epoch, 4),
            **metrics,
        }
        append_jsonl(self.path, row)
        if self._better(metrics[self.monitor], self.best):
            self.best, self.since = metrics[self.monitor], 0

            save_checkpoint({"model": state.model.state_dict()}, self.run_dir / outputs.BEST_MODEL)
            write_json(self.run_dir / "best.json", row)
        else:
            self.since += 1
        say(
            f"{self.phase} epoch {row['epoch']:g}: val loss {metrics['loss']:.4f}, acc "
            f"{metrics['accuracy']:.4f}, bal. acc {metrics['balanced_accuracy']:.4f}, ROC-AUC "
            f"{metrics['roc_auc']:.4f} (best {self.monitor} {self.best:.4f})"
        )
        if self.patience is not None and self.since >= self.patience:
            say(f"early stop: no better val {self.monitor} for {self.since} epoch(s)")
            state.stop = True


def finetune(options: FinetuneOptions, callbacks: Sequence[Callback] = ()) -> FinetuneResult:
    """Run (or resume) a fine-tuning run; ``callbacks`` are passed to every engine run.

    The run folder is locked for the run's life: a second run into it is refused."""
    with RunLock(options.out_dir), runfolder.recording(options.out_dir):
        return _finetune(options, callbacks)


def _finetune(options: FinetuneOptions, callbacks: Sequence[Callback]) -> FinetuneResult:
    start = time.perf_counter()
    run_dir = Path(options.out_dir)
    options = resume_settings(options, run_dir)
    options.pretrained = weights_source(options.pretrained, options.model)
    if options.pretrained is None:  # refused before the data is read (phase_plan: all cases)
        check_nothing_frozen(options.freeze, options.head_epochs or 0)
    bundle, notes = prepare.open_finetune_data(
        options.data, options.val_size, options.seed, options.on_bad,
        test_size=options.test_size, folds=options.folds, fold=options.fold,
    )  # fmt: skip
    check_classes(bundle)
    check_two_classes(list(bundle.classes), options.prevalence)
    counts = prepare.class_counts(bundle)
    options.monitor, chosen = prepare.auto_monitor(options.monitor, counts["train"])
    notes += [chosen] if chosen else []
    for split, by_class in counts.items():
        say(f"class counts ({split}): " + ", ".join(f"{c} {n:,}" for c, n in by_class.items()))
    for note in notes:
        say(note)
    model, prep, weights_file = build_model(options, bundle)
    plan = phase_plan(options, model)  # a bad stage name fails before the images are resized
    data = prepare.prepare_bundle(bundle, prep)
    for note in prep.notes:
        say(note)
    notes += prep.notes
    say(f"input pipeline: {prep.describe()}")
    weights = None
    if options.balanced_loss:
        weights = prepare.inverse_frequency(counts["train"])
        say("class weights (inverse frequency): " + ", ".join(f"{w:.3f}" for w in weights))
    if options.balanced_sampling:
        assert isinstance(data.train, ImageSet)  # prepare_bundle holds every split in memory
        data.train = prepare.oversample(data.train, options.seed)
        say(f"balanced sampling: training set oversampled to {len(data.train):,} images")
    batch = min(options.batch_size, len(data.train))
    bpe = len(data.train) // batch
    val_loader = _val_loader(data, prep, batch, options.device)
    if not options.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / OPTIONS_FILE, dataclasses.asdict(options))
    runfolder.start(run_dir, resume=options.resume)
    previous = None
    for phase in plan:
        config = engine_config(
            options, phase.lr, phase.epochs, bpe, batch, prep, weights, run_dir / phase.name
        )
        tracker = Tracker(
            run_dir,
            phase.name,
            val_loader,
            data.classes,
            options.monitor,
            options.patience,
            phase.epoch_offset,
        )
        prune = [] if options.keep_checkpoints else [PrunePrevious(previous, run_dir / phase.name)]
        _run_phase(phase, options, model, data, config, [tracker, *prune, *callbacks])
        previous = run_dir / phase.name
    info = {
        "notes": notes,
        "counts": counts,
        "weights_file": weights_file,
        "head_epochs": plan[0].epochs if len(plan) == 2 else 0,
        "phase2_frozen": plan[-1].frozen,
        "lr_mult": plan[-1].lr_mult,
        "class_weights": weights,
        "batch_size": batch,
        "wall_s": time.perf_counter() - start,
    }
    return outputs.finish(options, run_dir, model, prep, bundle, data, info)


class PrunePrevious(Callback):
    """Deletes the previous phase's checkpoint once this phase has saved its own ``last.pt``:
    from then on a resume starts from this phase, so the older one is never read again."""

    def __init__(self, previous: Path | None, phase_dir: Path) -> None:
        self.previous, self.own = previous, phase_dir / "last.pt"

    def _prune(self) -> None:
        if self.previous is not None and self.own.is_file():
            outputs.remove_checkpoints(self.previous)
            self.previous = None

    def on_step(self, state: Any) -> None:
        self._prune()

    def on_end(self, state: Any, result: Any) -> None:
        self._prune()


@dataclass
class Phase:
    """One engine run of the recipe: what is frozen (``None``: all but the head) and its lrs."""

    name: str
    epochs: float
    frozen: list[str] | None
    lr: float
    lr_mult: float
    epoch_offset: float


def phase_plan(options: FinetuneOptions, model: nn.Module) -> list[Phase]:
    """Phase 1 (head only; with pretrained weights by default) and phase 2 (unfrozen down to
    ``unfreeze_to``, ``freeze`` stages kept frozen, per-stage lrs falling towards the stem)."""

    stage_modules: Any = model.stage_modules  # every registered model has it (Backbone)
    stages = list(stage_modules())
    pretrained = options.pretrained is not None
    head_epochs = options.head_epochs if options.head_epochs is not None else 2 * pretrained
    frozen = list(options.freeze)
    if options.unfreeze_to is not None:
        if options.unfreeze_to not in stages:
            raise ResnetlabError(
                f"--unfreeze-to {options.unfreeze_to!r}: use one of {', '.join(stages)}."
            )
        frozen += [s for s in stages[: stages.index(options.unfreeze_to)] if s not in frozen]
    resolve_stages(model, frozen)  # unknown names: one clear error before anything is written
    if not pretrained:
        check_nothing_frozen(frozen, head_epochs)
    mult = options.lr_mult if options.lr_mult is not None else (0.4 if pretrained else 1.0)
    head_lr = options.lr_of_head
    full_lr = head_lr / 2 if pretrained else head_lr  # fastai's fine_tune
    plan = [Phase(PHASES[0], head_epochs, None, head_lr, 1.0, 0.0)] if head_epochs else []
    return plan + [Phase(PHASES[1], options.full_epochs, frozen, full_lr, mult, float(head_epochs))]


def check_nothing_frozen(frozen: Sequence[str], head_epochs: float = 0) -> None:
    """Without pretrained weights a frozen stage keeps its random initialisation for the whole
    run (every later stage then learns from noise), so freezing is refused, not warned about."""
    if frozen:
        raise ResnetlabError(
            f"frozen stages {', '.join(frozen)} would keep their random initialisation: no "
            "weights were loaded (--pretrained none, or none published for the model); drop "
            "--freeze/--unfreeze-to, or pass --pretrained with weights."
        )
    if head_epochs:
        raise ResnetlabError(
            f"--head-epochs {head_epochs:g} would train the head on a frozen, randomly "
            "initialised backbone: no weights were loaded; drop --head-epochs (or set it to 0), "
            "or pass --pretrained with weights."
        )


def _run_phase(phase: Phase, options, model: nn.Module, data, config, callbacks) -> None:
    """Freeze as the phase says and run it on the engine, unless it finished before."""

    unfreeze(model)
    if phase.frozen is None or phase.frozen:
        freeze(model, phase.frozen, options.bn)
    groups = param_groups(model, phase.lr, decay=options.decay, lr_mult=phase.lr_mult)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    kept = "all but the head" if phase.frozen is None else ", ".join(phase.frozen) or "none"
    say(
        f"{phase.name}: {phase.epochs:g} epoch(s) x {config.eval_every} steps, lr {phase.lr:g} "
        f"(x{phase.lr_mult:g} per stage towards the stem), frozen: {kept}, trainable "
        f"parameters {trainable:,}"
    )
    done = Path(config.out_dir) / "done.json"
    if done.is_file():
        last = Path(config.out_dir) / "last.pt"
        if last.is_file():  # else pruned: the next phase's checkpoint (or the model) has it all
            model.load_state_dict(load_checkpoint(last)["model"])
        say(f"{phase.name}: already finished, skipped")
        return
    result = train(config, model=model, data=data, callbacks=callbacks, param_groups=groups,
                   artifact=False)  # the run writes its one model at the end
    write_json(done, {"steps": result.steps, "trainable": trainable})


def _val_loader(data: Any, prep: Any, batch: int, device: str) -> Any:

    where = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return make_loader(
        data.val, max(batch, 256), train=False, device=where, mean=prep.mean, std=prep.std
    )


def engine_config(options, lr, epochs, bpe, batch, prep, weights, phase_dir) -> TrainConfig:
    """One phase as an engine run: the engine settings as given (``engine_settings``), with the
    phase's lr and length, the prepared data, and evaluation and checkpoints once per epoch."""
    return TrainConfig(**engine_settings(options) | dict(
        model_options=dict(options.model_options),
        data=options.data,
        normalisation={"mean": list(prep.mean), "std": list(prep.std)},
        pad=options.pad if options.pad is not None else max(1, round(prep.crop / 8)),
        batch_size=batch,
        lr=lr,
        weight_decay=options.decay,
        max_iters=None,
        epochs=epochs,
        class_weights=tuple(weights) if weights else None,
        eval_every=bpe,
        eval_splits=(),  # the tracker's pass over val gives loss, error and the rest
        checkpoint_every=bpe,
        log_every=max(1, min(bpe, 20)),
        out_dir=str(phase_dir),
        num_workers=0,
    ))  # fmt: skip
