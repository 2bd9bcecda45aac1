"""Named weights with their published metadata: torchvision's official ImageNet checkpoints and
the CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 (tag ``cifar10``); and the one home of
every published figure a model shows (``published(model)``: these weights' top-1, then the
papers' tables).

A static table so that listing and loading need neither a network nor torchvision's enums;
``tests/test_weights_io.py`` checks it against the installed torchvision so it cannot drift, and
``tests/test_named_weights.py`` checks the CIFAR-10 entries against the files in ``../shared``.
Accuracies are quoted as published by each release, never measured here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ResnetlabError, close_matches
from ..preprocessing import Preprocessing

SOURCE = "torchvision weights metadata (ImageNet-1K val, single crop)"
URL_ROOT = "https://download.pytorch.org/models/"
TORCHVISION_HOME = "https://pytorch.org/vision/stable/models.html"

CIFAR_HOME = "https://github.com/akamaster/pytorch_resnet_cifar10"
CIFAR_URL_ROOT = CIFAR_HOME + "/raw/master/pretrained_models/"
CIFAR_SOURCE = (
    "akamaster/pytorch_resnet_cifar10 README, acc@1 = 100 - column 'Test err(this impl.)' "
    "(CIFAR-10 test set), " + CIFAR_HOME
)
CIFAR_LICENCE = "BSD-2-Clause (Copyright (c) 2018, Yerlan Idelbayev)"
# CIFAR-10's label order (the authors' batches.meta), which is also sorted order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")  # fmt: skip


TV_TOP1 = "torchvision weights metadata (IMAGENET1K_V1, acc@1, single 224 crop)"
HE2015_T2 = "He et al. 2015, Table 2 (top-1 error, 10-crop, shortcut A)"
HE2015_T3 = "He et al. 2015, Table 3 (top-1 error, 10-crop)"
HE2015_T6 = "He et al. 2015, Table 6 (CIFAR-10 test error)"
# Table 6 gives ResNet-110 as "best (mean±std)" of 5 runs: the 6.43 quoted is the best of 5.
HE2015_T6_BEST = (
    "He et al. 2015, Table 6 (CIFAR-10 test error; ResNet-110: the best of 5 runs, whose mean "
    "is 6.61 ± 0.16)"
)
HE2016 = "He et al. 2016, Table 3 (CIFAR-10 test error, pre-activation)"


@dataclass(frozen=True)
class Published:
    """A figure quoted from a publication, never measured here."""

    metric: str
    value: float
    source: str

    def __str__(self) -> str:
        return f"{self.metric} {self.value:g} (published: {self.source})"


V1_PREP = Preprocessing(crop=224, resize=256)  # ImageNet mean/std, bilinear
V2_PREP = Preprocessing(crop=224, resize=232)
# The peer's trainer.py: ToTensor() then Normalize with the ImageNet mean/std, at 32x32.
CIFAR_PREP = Preprocessing(crop=32, resize=32)


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint: which model, which tag, where, and what was published."""

    model: str
    tag: str  # "imagenet-v1", "imagenet-v2" or "cifar10"
    file: str  # file name under the release's URL root; ends in its SHA-256's first 8 hex digits
    num_params: int
    acc1: float
    acc5: float | None
    file_size_mb: float
    preprocessing: Preprocessing
    default: bool = False  # the model's default weights (torchvision's DEFAULT; "imagenet")
    release: str = "torchvision"  # or "akamaster" (the CIFAR-10 ResNets)
    sha256: str | None = None  # the full digest, where recorded; else the name's prefix is checked

    @property
    def cifar(self) -> bool:
        return self.release == "akamaster"

    @property
    def url(self) -> str:
        return (CIFAR_URL_ROOT if self.cifar else URL_ROOT) + self.file

    @property
    def tags(self) -> tuple[str, ...]:
        alias = () if self.cifar else ("imagenet",)
        return (self.tag, *alias, "default") if self.default else (self.tag,)

    @property
    def classes(self) -> list[str]:
        return list(CIFAR10_CLASSES) if self.cifar else imagenet_classes()

    @property
    def source(self) -> str:
        """Where the published accuracy comes from."""
        return CIFAR_SOURCE if self.cifar else SOURCE

    def to_cfg(self) -> dict:
        """The ``model.pretrained_cfg`` dict that travels with a model loaded from these weights."""
        published: dict = {"acc@1": self.acc1, "acc@5": self.acc5, "source": self.source}
        if self.cifar:
            published = {"acc@1": self.acc1, "test error %": round(100 - self.acc1, 2),
                         "source": self.source}  # fmt: skip
        return {
            "model": self.model,
            "tag": self.tag,
            "url": self.url,
            "num_classes": len(self.classes),
            "classes": self.classes,
            "preprocessing": asdict(self.preprocessing),
            "published": published,
            "num_params": self.num_params,
            "licence": CIFAR_LICENCE if self.cifar else None,  # None: not recorded here
            "homepage": CIFAR_HOME if self.cifar else TORCHVISION_HOME,
        }


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in label order, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def _entry(model, version, digest, params, acc1, acc5, size_mb, default=False) -> WeightsEntry:
    prep = V2_PREP if version == 2 else V1_PREP
    return WeightsEntry(model, f"imagenet-v{version}", f"{model}-{digest}.pth", params,
                        acc1, acc5, size_mb, prep, default)  # fmt: skip


def _cifar(model: str, sha256: str, params: int, test_err: float, size: int) -> WeightsEntry:
    return WeightsEntry(model, "cifar10", f"{model}-{sha256[:8]}.th", params,
                        round(100 - test_err, 2), None, round(size / 2**20, 3), CIFAR_PREP,
                        True, "akamaster", sha256)  # fmt: skip


# model, SHA-256, parameters, published test error %, file size (bytes). The file names carry the
# SHA-256 prefix; the full digests were read from the published files (the same bytes as
# ../shared/peer/cifar-resnets). The files themselves store best_prec1 91.78/92.78/93.14/93.62,
# slightly above the README's table, which is what is quoted here.
CIFAR_CATALOG: tuple[WeightsEntry, ...] = (
    _cifar("resnet20", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
           269722, 8.27, 1099231),
    _cifar("resnet32", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
           464154, 7.37, 1890043),
    _cifar("resnet44", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
           658586, 6.90, 2680855),
    _cifar("resnet56", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
           853018, 6.61, 3471733),
)  # fmt: skip

# model, version, sha256 prefix, parameters, acc@1, acc@5, file size (MiB), torchvision DEFAULT
CATALOG: tuple[WeightsEntry, ...] = (
    _entry("resnet18", 1, "f37072fd", 11689512, 69.758, 89.078, 44.661, True),
    _entry("resnet34", 1, "b627a593", 21797672, 73.314, 91.42, 83.275, True),
    _entry("resnet50", 1, "0676ba61", 25557032, 76.13, 92.862, 97.781),
    _entry("resnet50", 2, "11ad3fa6", 25557032, 80.858, 95.434, 97.79, True),
    _entry("resnet101", 1, "63fe2227", 44549160, 77.374, 93.546, 170.511),
    _entry("resnet101", 2, "cd907fc2", 44549160, 81.886, 95.78, 170.53, True),
    _entry("resnet152", 1, "394f9c45", 60192808, 78.312, 94.046, 230.434),
    _entry("resnet152", 2, "f82ba261", 60192808, 82.284, 96.002, 230.474, True),
    _entry("wide_resnet50_2", 1, "95faca4d", 68883240, 78.468, 94.086, 131.82),
    _entry("wide_resnet50_2", 2, "9ba9bcbe", 68883240, 81.602, 95.758, 263.124, True),
    _entry("resnext50_32x4d", 1, "7cdf4587", 25028904, 77.618, 93.698, 95.789),
    _entry("resnext50_32x4d", 2, "1a0047aa", 25028904, 81.198, 95.34, 95.833, True),
    _entry("vgg11", 1, "8a719046", 132863336, 69.02, 88.628, 506.84, True),
    _entry("vgg11_bn", 1, "6002323d", 132868840, 70.37, 89.81, 506.881, True),
    _entry("vgg13", 1, "19584684", 133047848, 69.928, 89.246, 507.545, True),
    _entry("vgg13_bn", 1, "abd245e5", 133053736, 71.586, 90.374, 507.59, True),
    _entry("vgg16", 1, "397923af", 138357544, 71.592, 90.382, 527.796, True),
    _entry("vgg16_bn", 1, "6c64b313", 138365992, 73.36, 91.516, 527.866, True),
    _entry("vgg19", 1, "dcbb9e9d", 143667240, 72.376, 90.876, 548.051, True),
    _entry("vgg19_bn", 1, "c79401a0", 143678248, 74.218, 91.842, 548.143, True),
    *CIFAR_CATALOG,
)


def _paper(metric: str, source: str, values: dict[str, float]) -> dict[str, Published]:
    return {model: Published(metric, value, source) for model, value in values.items()}


# Figures of the papers themselves (no weights file behind them), by model name.
PAPER_FIGURES: dict[str, tuple[Published, ...]] = {}
for _table in (
    _paper("ImageNet top-1 error %", HE2015_T2,
           {"resnet18": 27.88, "resnet34": 25.03, "plain18": 27.94, "plain34": 28.54}),
    _paper("ImageNet top-1 error %", HE2015_T3,
           {"resnet50": 22.85, "resnet101": 21.75, "resnet152": 21.43}),
    _paper("CIFAR-10 test error %", HE2015_T6,
           {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
            "resnet1202": 7.93}),
    _paper("CIFAR-10 test error %, best of 5 runs", HE2015_T6_BEST, {"resnet110": 6.43}),
    _paper("CIFAR-10 test error %", HE2016,
           {"preact_resnet110": 6.37, "preact_resnet164": 5.46, "preact_resnet1001": 4.92}),
):  # fmt: skip
    for _model, _figure in _table.items():
        PAPER_FIGURES[_model] = (*PAPER_FIGURES.get(_model, ()), _figure)


def published(model: str) -> tuple[Published, ...]:
    """What is published about ``model``: its torchvision V1 weights' top-1, then the papers'."""
    weights = tuple(
        Published("ImageNet top-1 accuracy %", entry.acc1, TV_TOP1)
        for entry in CATALOG
        if entry.model == model and entry.tag == "imagenet-v1"
    )
    return weights + PAPER_FIGURES.get(model, ())


def list_weights(model: str | None = None) -> list[WeightsEntry]:
    """The named weights, all of them or those of one model."""
    return [entry for entry in CATALOG if model is None or entry.model == model]


def models_with_weights() -> list[str]:
    return list(dict.fromkeys(entry.model for entry in CATALOG))


def normalise_tag(tag: str) -> str:
    """Accept torchvision's enum names too: ``IMAGENET1K_V2`` -> ``imagenet-v2``."""
    tag = tag.strip().lower()
    return tag.replace("imagenet1k_", "imagenet-").replace("cifar-10", "cifar10")


def get_weights(model: str, tag: str | None = "imagenet") -> WeightsEntry:
    """The entry for ``model`` and ``tag`` (None: the model's default); unknown ones raise."""
    entries = list_weights(model)
    if not entries:
        raise ResnetlabError(
            f"{model} has no named weights; named weights exist for "
            f"{', '.join(models_with_weights())}. Pass a checkpoint path or URL instead."
        )
    wanted = normalise_tag(tag or "default")
    for entry in entries:
        if wanted in entry.tags:
            return entry
    tags = sorted({t for entry in entries for t in entry.tags} - {"default"})
    raise ResnetlabError(
        f"{model} has no weights tagged {tag!r}; choose one of {', '.join(tags)}."
        + close_matches(wanted, tags)
    )
