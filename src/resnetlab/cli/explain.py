"""``resnetlab explain``: Grad-CAM / Grad-CAM++ maps of images, the checks that they explain the
model, and a report; ``resnetlab compare-runs``: DeLong's test of two fine-tuned runs'
ROC-AUCs on the same test images, or two groups of seeds compared across seeds.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .. import runfolder
from ..analysis.explanation_suite import run_checks
from ..analysis.gradcam import METHODS, cam_maps, overlay
from ..artifact import load_trained
from ..data.preprocess import load_image
from ..errors import ResnetlabError
from ..evaluation.clinic import read_predictions
from ..evaluation.run_groups import compare_groups, expand_group, group_lines, same_test_images
from ..evaluation.uncertainty import delong_test
from ..files import atomic_write, write_json
from ..finetune.predict import expand_inputs
from ..groups import (
    Checked,
    DeviceSettings,
    ImagesSettings,
    InferenceSettings,
    ModelSettings,
    OutputSettings,
    RunFolderSettings,
    device_name,
)
from ..reports.explain_report import write_explain_report
from ..settings import REQUIRED, Default, compose, setting
from .flags import add_settings, settings_from_args

AUTO_CHECKS = 10  # images from which --checks auto runs the explanation checks


@dataclass(kw_only=True)
@compose(InferenceSettings, ImagesSettings, ModelSettings, DeviceSettings, RunFolderSettings,
         exclude=("tta", "top_k", "engine", "model", "model_options", "resume", "progress"),
         defaults={"source": REQUIRED, "images": REQUIRED, "out_dir": REQUIRED})  # fmt: skip
class ExplainSettings(Checked):
    """``resnetlab explain``: the method, class and layer; the rest from the groups."""

    method: str = setting("both", "Grad-CAM, Grad-CAM++ or both", choices=(*METHODS, "both"))
    target: str | None = setting(
        None, "class name or index (default: the predicted)", flag="--class"
    )
    layer: str | None = setting(
        None, "module name, e.g. layer4.1 (default: the family's last block)"
    )
    checks: str = setting(
        "auto", f"the explanation checks (randomisation test, deletion/insertion against a "
        f"random map) in the report: auto runs them from {AUTO_CHECKS} images (fewer give "
        "intervals too wide to conclude; the randomisation test makes one map per block and "
        "method)",
        choices=("auto", "on", "off"),
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        images: list[str] = setting()
        pretrained: str | None = setting()
        device: str = setting()
        out_dir: str = setting()


@dataclass(kw_only=True)
@compose(OutputSettings, RunFolderSettings, exclude=("csv", "resume", "progress"),
         defaults={"out_dir": Default(None, "none: printed only")})  # fmt: skip
class CompareRunsSettings(Checked):
    """``resnetlab compare-runs``: the two runs; where the result goes from the groups."""

    runs: list[str] = setting(
        help="run folders with predictions_test.csv: two runs (DeLong's test), or with --vs "
        "group A's runs, one per seed (a folder without predictions_test.csv: its sub-folders)"
    )
    vs: list[str] | None = setting(
        None, "group B's runs (same test images and classes): B - A across seeds with Welch's "
        "interval (none: RUN holds two runs, compared by DeLong's test)",
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        json: bool = setting()
        out_dir: str | None = setting()


def _class_index(text: str | None, classes: list) -> int | None:
    if text is None:
        return None
    names = [str(c) for c in classes]
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise ResnetlabError(
        f"--class {text!r} is not a class; use a name or an index 0..{len(classes) - 1}."
    )


def _save_png(path: Path, picture: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def output_stems(paths: list[Path]) -> list[str]:
    """One distinct file stem per image, the same for the same inputs: the image's own stem;
    where images share one (case aside), the folders that tell them apart before it (``b_x``
    for ``data/b/x.jpg`` beside ``data/a/x.jpg``), then the extension, then an index."""
    names = [p.stem for p in paths]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.casefold(), []).append(i)
    for members in groups.values():
        folders = [[re.sub(r"[^\w.-]+", "-", part) for part in paths[i].parent.parts
                    if part != paths[i].anchor] for i in members]  # fmt: skip
        shared = 0  # the leading folders all of them share
        while all(len(f) > shared and f[shared] == folders[0][shared] for f in folders):
            shared += 1
        for i, own in zip(members, folders, strict=True):
            names[i] = "_".join((*own[shared:], paths[i].stem)) if len(members) > 1 else names[i]
    counts = Counter(name.casefold() for name in names)
    for i, path in enumerate(paths):
        if counts[names[i].casefold()] > 1 and path.suffix:
            names[i] += f"_{path.suffix.lstrip('.')}"
    taken: set[str] = set()
    for i, name in enumerate(names):
        k = 1
        while names[i].casefold() in taken:
            k += 1
            names[i] = f"{name}-{k}"
        taken.add(names[i].casefold())
    return names


def run_explain(args: argparse.Namespace) -> int:
    settings = settings_from_args(ExplainSettings, args)
    trained = load_trained(settings.source, settings.pretrained, device_name(settings.device))
    model, classes = trained.model, trained.classes
    paths = expand_inputs(settings.images)
    if not paths:
        raise ResnetlabError("no image files matched; give files, folders or globs.")
    target = _class_index(settings.target, classes)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = METHODS if settings.method == "both" else (settings.method,)
    checks = settings.checks == "on" or (settings.checks == "auto" and len(paths) >= AUTO_CHECKS)
    records, inputs, classes_used, overlays = [], [], [], []
    for path, name in zip(paths, output_stems(paths), strict=True):
        try:
            image = load_image(path)[None]
        except (OSError, ValueError, SyntaxError) as exc:
            raise ResnetlabError(
                f"{path}: not a readable image ({exc}); fix it or leave it out."
            ) from None
        x, raw = trained.inputs(image), trained.prepared(image)
        record: dict[str, Any] = {"image": str(path)}
        for method in methods:
            result = cam_maps(model, x, method=method, layer=settings.layer, target=target)
            cam, c = result["maps"][0], int(result["classes"][0])
            stem = f"{name}_{method.replace('++', 'pp')}"
            _save_npy(out / f"{stem}.npy", cam.numpy())
            _save_png(out / f"{stem}.png", overlay(raw[0], cam))
            p = trained.probabilities(result["logits"][:1])[0, c].item()
            record |= {"layer": result["layer"], "class": str(classes[c]), "probability": p,
                       method: {"png": f"{stem}.png", "npy": f"{stem}.npy"}}  # fmt: skip
        overlays.append(out / record[methods[0]]["png"])
        if checks:
            inputs.append(x)
            classes_used.append(c)
        records.append(record)
        print(f"{path}: {record['class']} (p {record['probability']:.3f}), layer {record['layer']}")
    summary: dict[str, Any] = {
        "source": settings.source, "images": records, "command": runfolder.command_line(),
        "machine": runfolder.machine(trained.device), "versions": runfolder.versions(),
    }  # fmt: skip
    if checks:
        summary["checks"] = run_checks(model, torch.cat(inputs), torch.tensor(classes_used),
                                       methods, layer=settings.layer)  # fmt: skip
        for line in summary["checks"]["verdicts"]:
            print(line)
    else:
        summary["checks_skipped"] = (
            f"explanation checks not run ({len(paths)} image(s); --checks auto runs them from "
            f"{AUTO_CHECKS}, --checks on always)."
        )
    write_json(out / "explain.json", summary)
    report = write_explain_report(out, summary, overlays)
    print(f"maps: {out.resolve()}")
    print(f"report: {report.resolve()}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    settings = settings_from_args(CompareRunsSettings, args)
    if settings.vs:
        group_a, group_b = expand_group(settings.runs), expand_group(settings.vs)
        if len(group_a) == len(group_b) == 1:
            result = _delong(group_a[0], group_b[0])
        else:
            result = compare_groups(group_a, group_b)
            print("\n".join(group_lines(result)))
    elif len(settings.runs) == 2:
        result = _delong(Path(settings.runs[0]), Path(settings.runs[1]))
    else:
        raise ResnetlabError(
            f"{len(settings.runs)} run(s) given; give two runs (DeLong's test) or two groups "
            "of seeds: RUN_A1 RUN_A2 ... --vs RUN_B1 RUN_B2 ..."
        )
    if settings.out_dir:
        write_json(Path(settings.out_dir), result)
    if settings.json:
        print(json.dumps(result, indent=2))
    return 0


def _delong(run_a: Path, run_b: Path) -> dict[str, Any]:
    """DeLong's test of two runs' test ROC-AUCs on the same images, printed in a line."""
    same_test_images([run_a, run_b])
    scores_a, labels_a = read_predictions(run_a)
    scores_b, _ = read_predictions(run_b)
    result = delong_test(scores_a, scores_b, labels_a == 1)
    result |= {"run_a": str(run_a), "run_b": str(run_b), "test": "DeLong (1988)"}
    print(
        f"ROC-AUC {run_a}: {result['auc_a']:.4f} (SE {result['se_a']:.4f}); {run_b}: "
        f"{result['auc_b']:.4f} (SE {result['se_b']:.4f}); difference {result['difference']:+.4f} "
        f"[{result['difference_ci95'][0]:+.4f}, {result['difference_ci95'][1]:+.4f}], "
        f"z {result['z']:.3f}, two-sided p {result['p_value']:.4g} (DeLong, "
        f"{result['n_positive']} positive / {result['n_negative']} negative test images)"
    )
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", help="Grad-CAM / Grad-CAM++ maps for images, checked, with a report"
    )
    add_settings(p, ExplainSettings, positional={"source": "RUN_OR_MODEL", "images": "IMAGES"},
                 required=("out_dir",), eager=True)  # fmt: skip
    p.set_defaults(func=run_explain)

    p = subparsers.add_parser(
        "compare-runs", help="two runs' test ROC-AUCs (DeLong), or two groups of seeds (Welch)"
    )
    add_settings(p, CompareRunsSettings, positional={"runs": "RUN"}, eager=True)
    p.set_defaults(func=run_compare)
