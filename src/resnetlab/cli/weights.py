"""``resnetlab weights [MODEL]``: the named pretrained weights, and whether each is cached."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ResnetlabError
from ..groups import Checked, ModelSettings
from ..models import model_info
from ..settings import Default, compose, setting
from ..weights import catalog, hub
from .flags import add_settings, settings_from_args
from .models import print_table


@dataclass(kw_only=True)
@compose(ModelSettings, only=("model",), defaults={"model": Default(None, "every model's")})
class WeightsSettings(Checked):
    """``resnetlab weights``: whose weights, and whether to download them now."""

    download: bool = setting(False, "download MODEL's weights now")
    tag: str | None = setting(None, "weights tag for --download (default: the model's default)")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        model: str | None = setting()


def run_weights(namespace: argparse.Namespace) -> int:
    args = settings_from_args(WeightsSettings, namespace)
    if args.model is not None:
        model_info(args.model)  # an unknown name raises with close matches
    entries = catalog.list_weights(args.model)
    if not entries:
        catalog.get_weights(args.model)  # raises, naming the models that have weights
    if args.download:
        if args.model is None:
            raise ResnetlabError(
                "--download needs a MODEL, e.g. `resnetlab weights resnet50 --download`."
            )
        entry = catalog.get_weights(args.model, args.tag)
        print(f"{entry.model} {entry.tag}: {hub.fetch_named(entry.url, sha256=entry.sha256)}")
        return 0
    rows = []
    for entry in entries:
        cached = hub.cached_file(entry.url, verify=False)  # hashing every file would be slow
        if cached and round(cached.stat().st_size / 2**20, 3) != entry.file_size_mb:
            cached = None  # not the published file; loading it would be refused anyway
        tags = entry.tag + (" (imagenet)" if entry.default and not entry.cifar else "")
        acc5 = "-" if entry.acc5 is None else f"{entry.acc5:.3f}"
        rows.append(
            [entry.model, tags, f"{entry.acc1:.3f}", acc5,
             f"{entry.file_size_mb:.1f} MiB", str(cached) if cached else "no"]
        )  # fmt: skip
    print_table(["model", "tag", "acc@1", "acc@5", "size", "cached"], rows, right={2, 3, 4})
    for source in dict.fromkeys(entry.source for entry in entries):
        print(f"\nacc@1/acc@5: as published in {source}; not measured here.", end="")
    print(f"\ncache: {hub.weights_dir()} (also reads {hub.torch_cache_dir()})")
    mirror = os.environ.get(hub.MIRROR_ENV)
    if mirror:
        print(f"mirror: {mirror} (from {hub.MIRROR_ENV}; used for files not in the cache)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="list the named pretrained weights and the cache")
    add_settings(p, WeightsSettings, positional={"model": "MODEL"}, eager=True)
    p.set_defaults(func=run_weights)
