"""``resnetlab evaluate``: a trained model on a labelled split, with the full metric set and
confusion-matrix and ROC plots; the predictive values at a deployment prevalence, metrics per
subgroup of manifest columns, and on other data than the run's an external validation entry in
its model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..artifact import load_trained
from ..card import EXTERNAL
from ..console import say
from ..data import DataBundle, ImageSet, open_data
from ..data.folder import BAD_ERRORS, report_bad
from ..data.preprocess import Preprocessing, load_image, prepare_images
from ..errors import ResnetlabError
from ..evaluation.clinic import analyse, image_digests, prevalence_line
from ..evaluation.decision import check_two_classes
from ..evaluation.logits import image_logits, image_probabilities
from ..evaluation.metrics import classification_metrics
from ..evaluation.plots import plot_confusion, plot_roc
from ..evaluation.subgroups import subgroup_lines, subgroup_metrics
from ..files import write_json
from ..reports.report import render_report
from .prepare import open_finetune_data
from .validation import external_entry, record_external, subgroup_columns


def evaluate_run(
    source: str | Path,
    data: str,
    *,
    split: str = "test",
    out: Path | None = None,
    batch_size: int = 64,
    tta: bool = False,
    device: str = "cpu",
    on_bad: str = "error",
    engine: str = "auto",
    prevalence: float | None = None,
    subgroups: tuple[str, ...] = (),
) -> dict[str, Any]:
    """All metrics of a fine-tuned model on a labelled split of ``data``; plots and
    ``metrics_<split>.json`` go to ``out`` when given (and its report, if it has one, is
    rendered again); ``on_bad`` as for ``open_data``; the model runs on ``engine``
    (``optimize_for_inference``). ``prevalence``: PPV and NPV at it (two classes);
    ``subgroups``: manifest columns measured value by value.
    On the run's own data the splits are the run's (a held-out val or test re-created); on
    other data the result is recorded in the run's model card as an external validation."""

    loaded = load_trained(source, device=device)
    check_two_classes(loaded.classes, prevalence)
    bundle, how = run_splits(data, loaded.card, on_bad)
    part = getattr(bundle, split, None) if split in ("train", "val", "test") else None
    if part is None:
        present = [s for s in ("train", "val", "test") if getattr(bundle, s) is not None]
        recorded = (loaded.card.get("training") or {}).get("options") or {}
        hint = f" (the run split {recorded['data']}; give that data to re-create its splits)" \
            if recorded.get("data") and how is None else ""  # fmt: skip
        raise ResnetlabError(
            f"{data} has no {split!r} split{hint}; choose one of {', '.join(present)}."
        )
    if list(bundle.classes) != loaded.classes:
        raise ResnetlabError(
            f"the data's classes ({', '.join(bundle.classes[:10])}) differ from the model's "
            f"({', '.join(loaded.classes[:10])}); evaluate on data with the same classes."
        )
    columns = subgroup_columns(part, subgroups, data) if subgroups else {}
    images, labels, keep = _split_images(part, loaded.preprocessing)
    model = loaded.optimized(engine)
    temperature = loaded.temperature
    probs = image_probabilities(model, images, loaded.preprocessing, batch_size=batch_size,
                                tta=tta, temperature=temperature)  # fmt: skip
    metrics = classification_metrics(probs.clamp_min(1e-12).log(), labels, loaded.classes)
    metrics |= {"split": split, "data": str(data), "tta": tta, "temperature": temperature}
    if how is not None:
        metrics["splits"] = how
    point = loaded.card.get("operating_point")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    if point is not None:
        logits = image_logits(model, images, loaded.preprocessing, batch_size=batch_size)
        fit = {"temperature": temperature, "threshold": point, "fitted_on": "val (model card)"}
        clinical = analyse(fit, {split: (logits, labels)}, loaded.classes,
                           Path(out) if out is not None else None,
                           test_probs=probs if tta else None, evaluated=split,
                           digests=image_digests(part) if len(part) == len(labels) else None,
                           prevalence=prevalence)  # fmt: skip
        metrics["clinical"] = clinical
    elif prevalence is not None:
        say("PPV and NPV at the prevalence not computed: the model card has no operating point "
            "(fine-tune the model to choose a threshold on validation)")  # fmt: skip
    summary = []  # what the report of a run folder given as ``out`` adds
    at = (metrics.get("clinical", {}).get(split) or {}).get("reviewer", {}).get("prevalence")
    if at is not None:
        summary.append(f"{split}: {prevalence_line(at)}")
    if columns:
        chosen = {name: [values[i] for i in keep] for name, values in columns.items()}
        metrics["subgroups"] = subgroup_metrics(probs.numpy(), labels.numpy(), chosen,
                                                loaded.threshold)  # fmt: skip
        summary += subgroup_lines(metrics["subgroups"], split)
    if summary:
        metrics["summary"] = summary
    if how is None:
        entry = external_entry(loaded.card, str(data), bundle.source, split, metrics)
        if record_external(loaded, entry):
            metrics[EXTERNAL] = entry
    if out is not None:
        out = Path(out)
        write_json(out / f"metrics_{split}.json", metrics)
        plot_confusion(
            metrics["confusion_matrix"],
            loaded.classes,
            out / f"confusion_{split}.png",
            f"{split} ({len(labels)} images)",
        )
        plot_roc(probs, labels, loaded.classes, out / f"roc_{split}.png", split)
        if (out / "report.html").is_file():
            render_report([out])
    return metrics


def run_splits(data: str, card: dict[str, Any], on_bad: str) -> tuple[DataBundle, str | None]:
    """``data`` split as the run split it, when it is the run's own data (its settings are in
    the card): the same held-out val/test or fold; else ``data`` as it is. The second value
    says how the splits were made (None: as the data has them)."""
    training = card.get("training") or {}
    options = training.get("options") or {}
    if not options.get("data") or not _same_data(options["data"], data):
        return open_data(data, on_bad=on_bad), None
    if training.get("kind") == "train":  # the engine's own split of the data
        bundle = open_data(data, val_size=options.get("val_size"), seed=options.get("seed", 0),
                           on_bad=on_bad)  # fmt: skip
        return bundle, "as the run made them"
    bundle, notes = open_finetune_data(
        data, options["val_size"], options["seed"], on_bad,
        test_size=options.get("test_size") or 0.0, folds=options.get("folds") or 1,
        fold=options.get("fold"),
    )  # fmt: skip
    return bundle, "as the run made them" + (f": {'; '.join(notes)}" if notes else "")


def _same_data(recorded: str, given: str) -> bool:
    if str(recorded) == str(given):
        return True
    return Path(recorded).expanduser().resolve() == Path(given).expanduser().resolve()


def _split_images(part: Any, prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """uint8 images of a split, their labels and the indices of the images used: the
    in-memory tensor, or each file decoded and preprocessed (unreadable files raise or are
    left out, as ``part.on_bad`` says)."""

    if isinstance(part, ImageSet):
        return part.images, part.labels, list(range(len(part.labels)))
    images, keep, bad = [], [], []
    for i, path in enumerate(part.paths):
        try:
            images.append(prepare_images(load_image(path, prep.resize)[None], prep))
            keep.append(i)
        except BAD_ERRORS:
            bad.append(str(path))
    report_bad(part.source, bad, part.on_bad)
    if not images:
        raise ResnetlabError(f"{part.source}: none of the images could be read; check the files")
    return torch.cat(images), part.labels[torch.tensor(keep)], keep
