"""``resnetlab explain``: Grad-CAM / Grad-CAM++ maps of images; ``resnetlab compare-runs``:
DeLong's test of two fine-tuned runs' ROC-AUCs on the same test images.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..analysis.gradcam import METHODS, cam_maps, overlay
from ..card import load_source
from ..data.preprocess import load_image, normalise, prepare_images
from ..errors import ResnetlabError
from ..evaluation.clinic import read_predictions
from ..evaluation.uncertainty import delong_test
from ..files import atomic_write, write_json
from ..finetune.predict import expand_inputs


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
    model, prep, classes, temperature = load_source(args.source, args.pretrained, args.device)
    paths = expand_inputs(args.images)
    if not paths:
        raise ResnetlabError("no image files matched; give files, folders or globs.")
    target = _class_index(args.target, classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = METHODS if args.method == "both" else (args.method,)
    records = []
    for path, name in zip(paths, output_stems(paths), strict=True):
        try:
            raw = prepare_images(load_image(path)[None], prep)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ResnetlabError(
                f"{path}: not a readable image ({exc}); fix it or leave it out."
            ) from None
        x = normalise(raw.to(args.device), prep)
        record: dict[str, Any] = {"image": str(path)}
        for method in methods:
            result = cam_maps(model, x, method=method, layer=args.layer, target=target)
            cam, c = result["maps"][0], int(result["classes"][0])
            stem = f"{name}_{method.replace('++', 'pp')}"
            _save_npy(out / f"{stem}.npy", cam.numpy())
            _save_png(out / f"{stem}.png", overlay(raw[0], cam))
            p = torch.softmax(result["logits"][0] / temperature, 0)[c].item()
            record |= {"layer": result["layer"], "class": str(classes[c]), "probability": p,
                       method: {"png": f"{stem}.png", "npy": f"{stem}.npy"}}  # fmt: skip
        records.append(record)
        print(f"{path}: {record['class']} (p {record['probability']:.3f}), layer {record['layer']}")
    write_json(out / "explain.json", {"source": args.source, "images": records})
    print(f"maps: {out.resolve()}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    scores_a, labels_a = read_predictions(Path(args.run_a))
    scores_b, labels_b = read_predictions(Path(args.run_b))
    if len(labels_a) != len(labels_b) or (labels_a != labels_b).any():
        raise ResnetlabError(
            "the two runs' test labels differ; DeLong's test needs both models on the same "
            "test images in the same order."
        )
    result = delong_test(scores_a, scores_b, labels_a == 1)
    result |= {"run_a": str(args.run_a), "run_b": str(args.run_b), "test": "DeLong (1988)"}
    print(
        f"ROC-AUC {args.run_a}: {result['auc_a']:.4f} (SE {result['se_a']:.4f}); {args.run_b}: "
        f"{result['auc_b']:.4f} (SE {result['se_b']:.4f}); difference {result['difference']:+.4f} "
        f"[{result['difference_ci95'][0]:+.4f}, {result['difference_ci95'][1]:+.4f}], "
        f"z {result['z']:.3f}, two-sided p {result['p_value']:.4g} (DeLong, "
        f"{result['n_positive']} positive / {result['n_negative']} negative test images)"
    )
    if args.out:
        write_json(Path(args.out), result)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="Grad-CAM / Grad-CAM++ maps for images")
    p.add_argument("source", metavar="RUN_OR_MODEL",
                   help="fine-tuning run folder, model file + card, or a model name")  # fmt: skip
    p.add_argument("images", metavar="IMAGES", nargs="+", help="files, folders or globs")
    p.add_argument("--out", required=True, help="folder for the overlays (.png) and maps (.npy)")
    p.add_argument("--method", choices=(*METHODS, "both"), default="both",
                   help="Grad-CAM, Grad-CAM++ or both (default both)")  # fmt: skip
    p.add_argument("--class", dest="target", help="class name or index (default: the predicted)")
    p.add_argument("--layer", help="module name, e.g. layer4.1 (default: the family's last block)")
    p.add_argument("--pretrained", help="weights tag for a model name, e.g. imagenet")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    p.set_defaults(func=run_explain)

    p = subparsers.add_parser("compare-runs", help="DeLong's test of two runs' test ROC-AUCs")
    p.add_argument("run_a", metavar="RUN_A", help="run folder with predictions_test.csv")
    p.add_argument("run_b", metavar="RUN_B", help="another run on the same test images")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=run_compare)
