"""Linear centred kernel alignment (CKA) between the layers of two nets, or of a net with itself.

Minibatch CKA (Nguyen, Raghu & Kornblith 2021, §2): per batch, the linear Gram matrix of each
layer's flattened activations; the unbiased HSIC estimator (Song et al. 2012) of every pair of
layers, summed over batches; CKA = ΣHSIC(K, L) / sqrt(ΣHSIC(K, K) · ΣHSIC(L, L)). Only the sums
are kept (one matrix of layers × layers), so memory does not grow with the number of images.
The unbiased HSIC of all pairs is one matrix product of the stacked U-centred Grams (Székely &
Rizzo 2014): HSIC₁(K, L) = ⟨Ũ(K), Ũ(L)⟩ / (n(n - 3)). :func:`linear_cka` is the full-batch
CKA of Kornblith et al. 2019 (Eq. 5), for checks and small sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError

MIN_BATCH = 4  # the unbiased estimator divides by n(n - 3)
STEM_MODULES = ("conv1", "bn1", "relu", "maxpool")


def flatten(x: torch.Tensor) -> torch.Tensor:
    """Activations as (images, features); channels-last maps are read as they lie (a Gram
    matrix does not depend on the order of the features)."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], -1)


def gram(x: torch.Tensor) -> torch.Tensor:
    """The linear Gram matrix (float64) of activations (n, ...), centred over the batch first:
    centring changes neither HSIC estimator and keeps the float32 product accurate."""
    features = flatten(x.detach())
    features = features - features.mean(0, keepdim=True)
    return (features @ features.T).double()


def u_centre(grams: torch.Tensor) -> torch.Tensor:
    """U-centred Gram matrices (Székely & Rizzo 2014), for (L, n, n) or (n, n): zero diagonal,
    rows and columns centred so that their inner product is n(n - 3) times the unbiased HSIC."""
    n = grams.shape[-1]
    if n < MIN_BATCH:
        raise ResnetlabError(f"unbiased HSIC needs at least {MIN_BATCH} images a batch, got {n}.")
    out = grams.clone()
    out.diagonal(dim1=-2, dim2=-1).zero_()
    means = out.sum(-1) / (n - 2)
    means -= means.sum(-1, keepdim=True) / (2 * (n - 1))
    out -= means.unsqueeze(-1)
    out -= means.unsqueeze(-2)
    out.diagonal(dim1=-2, dim2=-1).zero_()
    return out


def double_centre(grams: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11ᵀ/n, for (L, n, n) or (n, n): the biased HSIC's centring."""
    out = grams - grams.mean(-1, keepdim=True)
    return out - out.mean(-2, keepdim=True)


def hsic_matrix(grams: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """HSIC of every pair of the stacked Gram matrices (L, n, n) of one batch, as (L, L): the
    unbiased estimator HSIC₁ (Song et al. 2012), or the biased tr(KHLH) / (n - 1)²."""
    n = grams.shape[-1]
    if unbiased:
        flat = u_centre(grams).reshape(grams.shape[0], -1)
        return flat @ flat.T / (n * (n - 3))
    flat = double_centre(grams).reshape(grams.shape[0], -1)
    return flat @ flat.T / (n - 1) ** 2


def cka_from_hsic(hsic: torch.Tensor, rows: Sequence[int], cols: Sequence[int]) -> torch.Tensor:
    """CKA of the layers ``rows`` against ``cols`` from (summed) HSIC of every pair."""
    hsic = hsic.double()
    own = hsic.diagonal()
    rows_t, cols_t = torch.as_tensor(list(rows)), torch.as_tensor(list(cols))
    scale = (own[rows_t].clamp_min(0).unsqueeze(1) * own[cols_t].clamp_min(0).unsqueeze(0)).sqrt()
    return hsic[rows_t][:, cols_t] / torch.where(scale > 0, scale, torch.ones_like(scale))


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = False) -> float:
    """Full-batch linear CKA of activations x (n, ...) and y (n, ...) of the same images.

    Biased (Kornblith et al. 2019, Eq. 5): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred features,
    in that feature-space form while both have at most n features, else in the equal Gram form;
    unbiased: from HSIC₁ of the two Gram matrices.
    """
    a, b = flatten(x.detach()).double(), flatten(y.detach()).double()
    if a.shape[0] != b.shape[0]:
        raise ResnetlabError(f"CKA needs the same images: {a.shape[0]} rows against {b.shape[0]}.")
    if unbiased:
        hsic = hsic_matrix(torch.stack([a @ a.T, b @ b.T]))
        return float(cka_from_hsic(hsic, [0], [1]))
    a, b = a - a.mean(0), b - b.mean(0)
    if max(a.shape[1], b.shape[1]) <= a.shape[0]:
        cross = (b.T @ a).square().sum()
        return float(cross / (torch.linalg.norm(a.T @ a) * torch.linalg.norm(b.T @ b)))
    ka, kb = a @ a.T, b @ b.T
    return float((ka * kb).sum() / (torch.linalg.norm(ka) * torch.linalg.norm(kb)))


class CkaAccumulator:
    """Running sums of HSIC over minibatches for every pair of ``layers`` layers: one
    (layers × layers) float64 matrix, whatever the number of images."""

    def __init__(self, layers: int) -> None:
        self.sums = torch.zeros(layers, layers, dtype=torch.float64)
        self.batches = 0
        self.images = 0

    def add(self, hsic: torch.Tensor, images: int) -> None:
        """Add one batch's HSIC matrix (from :func:`hsic_matrix`) of ``images`` images."""
        self.sums += hsic.double()
        self.batches += 1
        self.images += images

    def cka(self, rows: Sequence[int], cols: Sequence[int]) -> torch.Tensor:
        """Minibatch CKA of layers ``rows`` against ``cols`` so far."""
        if not self.batches:
            raise ResnetlabError("no batch was measured; give at least 4 images.")
        return cka_from_hsic(self.sums, rows, cols)


def pack(matrix: torch.Tensor) -> list[float]:
    """The upper triangle (row by row) of a symmetric matrix, for a journal line."""
    i, j = torch.triu_indices(matrix.shape[0], matrix.shape[0])
    return [float(v) for v in matrix[i, j]]


def unpack(values: Sequence[float], size: int) -> torch.Tensor:
    """The symmetric (size × size) matrix whose upper triangle :func:`pack` wrote."""
    i, j = torch.triu_indices(size, size)
    out = torch.zeros(size, size, dtype=torch.float64)
    out[i, j] = torch.as_tensor(list(values), dtype=torch.float64)
    out[j, i] = out[i, j]
    return out


def call_order(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """How often each named module runs in one forward of ``example``, in first-call order."""
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(
                module.register_forward_hook(
                    lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
                )
            )
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def default_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The layers worth comparing, named as in the model: for a ResNet or plain twin the stem's
    output, every block of layer1…layer4, the pooled features and the head; for a VGG every
    convolution's ReLU, the classifier's ReLUs and the head."""
    calls = call_order(model, example)
    head = getattr(model, "head_name", "fc")
    modules = dict(model.named_modules())
    if "layer1" in modules:
        order = [n for n in calls if "." not in n]
        stem = [n for n in order[: order.index("layer1")] if n in STEM_MODULES]
        blocks = [f"{s}.{i}" for s in ("layer1", "layer2", "layer3", "layer4") if s in modules
                  for i in range(len(modules[s]))]  # fmt: skip
        names = stem[-1:] + blocks + [n for n in ("avgpool",) if n in calls] + [head]
    elif isinstance(modules.get("features"), nn.Sequential):
        relus = [n for n in calls if n.startswith(("features.", "classifier."))
                 and isinstance(modules[n], nn.ReLU)]  # fmt: skip
        names = relus + [head]
    else:
        raise ResnetlabError(
            f"no default layers for {type(model).__name__}; name them with --layers."
        )
    check_layers(model, names, calls)
    return names


def check_layers(model: nn.Module, names: Sequence[str], calls: dict[str, int]) -> None:
    """Refuse a layer the model lacks, one its forward skips, or one it runs more than once
    (a shared ReLU: its output would be ambiguous)."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ResnetlabError(f"{type(model).__name__} has no layer {name!r}.")
        if calls.get(name, 0) != 1:
            raise ResnetlabError(
                f"layer {name!r} of {type(model).__name__} runs {calls.get(name, 0)} times in a "
                "forward pass; choose a layer that runs once (a block, not a shared ReLU)."
            )


def chosen_layers(
    model: nn.Module, names: Sequence[str] | None, example: torch.Tensor
) -> list[str]:
    """``names`` once checked against one forward of ``example``, else the default layers."""
    if not names:
        return default_layers(model, example)
    check_layers(model, names, call_order(model, example))
    return list(names)


def stage_of(name: str, model: nn.Module) -> str:
    """The stage a layer belongs to: stem, layer1…, pool, head (VGG: block1…, classifier)."""
    first = name.split(".")[0]
    if name == getattr(model, "head_name", "fc"):
        return "head"
    if first in STEM_MODULES:
        return "stem"
    if first == "avgpool":
        return "pool"
    if first == "features":
        before = list(model.get_submodule("features").children())[: int(name.split(".")[1])]
        return f"block{sum(isinstance(m, nn.MaxPool2d) for m in before) + 1}"
    return first


class LayerGrams:
    """Forward hooks that turn each named layer's output into its Gram matrix as it is made,
    so no activation outlives its layer; :meth:`take` returns them stacked (L, n, n)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model, self.names = model, list(names)
        self.grams: list[torch.Tensor | None] = [None] * len(self.names)

    @contextmanager
    def hooked(self) -> Iterator[LayerGrams]:
        """The hooks in place for the forward passes run inside the block, removed after."""
        handles = [self.model.get_submodule(name).register_forward_hook(self._hook(i))
                   for i, name in enumerate(self.names)]  # fmt: skip
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.grams[index] = gram(output[0] if isinstance(output, tuple) else output)

        return hook

    def take(self) -> torch.Tensor:
        """The Grams of the last forward, stacked in layer order, and the slots emptied."""
        missing = [n for n, g in zip(self.names, self.grams, strict=True) if g is None]
        if missing:
            raise ResnetlabError(f"layers {', '.join(missing)} did not run in the forward pass.")
        out = torch.stack([g for g in self.grams if g is not None])
        self.grams = [None] * len(self.names)
        return out


def batch_hsic(nets: Sequence[tuple[LayerGrams, torch.Tensor]]) -> torch.Tensor:
    """The unbiased HSIC of every pair of layers of all ``nets`` (each its hooks and its input
    batch): one forward each, then one matrix product over the stacked U-centred Grams."""
    grams = []
    with torch.inference_mode():
        for hooks, x in nets:
            with hooks.hooked():
                hooks.model(x)
            grams.append(hooks.take())
    return hsic_matrix(torch.cat(grams))


@dataclasses.dataclass
class CkaResult:
    """Minibatch CKA of two nets: A's layers against B's, each net against itself, and the
    summed HSIC of every pair of layers it came from (its size: layers², whatever the images)."""

    layers_a: list[str]
    layers_b: list[str]
    cka: torch.Tensor
    self_a: torch.Tensor
    self_b: torch.Tensor
    hsic: torch.Tensor
    images: int
    batches: int


def minibatch_cka(
    model_a: nn.Module,
    model_b: nn.Module | None,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
) -> CkaResult:
    """Layer-by-layer minibatch CKA (unbiased HSIC) of ``model_a`` against ``model_b`` (None:
    the net with itself, one forward a batch) over ``batches`` of images (or pairs of each
    net's input); layers by name, else :func:`default_layers`. Models are used as given
    (eval mode expected)."""
    same = model_b is None or model_b is model_a
    nets: list[LayerGrams] = []
    accumulator: CkaAccumulator | None = None
    for batch in batches:
        xa, xb = batch if isinstance(batch, tuple) else (batch, batch)
        if accumulator is None:
            nets = [LayerGrams(model_a, chosen_layers(model_a, layers_a, xa[:1]))]
            if not same:
                assert model_b is not None
                nets.append(LayerGrams(model_b, chosen_layers(model_b, layers_b, xb[:1])))
            accumulator = CkaAccumulator(sum(len(n.names) for n in nets))
        inputs = [xa] if same else [xa, xb]
        accumulator.add(batch_hsic(list(zip(nets, inputs, strict=True))), len(xa))
    if accumulator is None:
        raise ResnetlabError("no batch to measure; give at least 4 images.")
    a = range(len(nets[0].names))
    b = a if same else range(len(a), len(a) + len(nets[1].names))
    return CkaResult(nets[0].names, nets[-1].names, accumulator.cka(a, b), accumulator.cka(a, a),
                     accumulator.cka(b, b), accumulator.sums, accumulator.images,
                     accumulator.batches)  # fmt: skip


def even_batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of batches of at most ``batch_size`` images, as even as possible and at
    least 4 each (a set too small for that is one batch)."""
    if count < MIN_BATCH:
        raise ResnetlabError(f"CKA needs at least {MIN_BATCH} images, got {count}.")
    k = -(-count // batch_size)
    if count // k < MIN_BATCH:
        k = max(1, count // MIN_BATCH)
    bounds = [count * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
