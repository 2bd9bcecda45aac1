"""Batches for training and evaluation, deterministic and resumable with no saved state.

Epoch ``e`` visits the samples in a permutation drawn from a generator seeded by (seed, e)
only, and the augmentation of global batch ``i`` comes from a generator seeded by
(seed, e, i) only. So ``epoch(e, start_batch=k)`` reproduces batches k.. of an uninterrupted
run bit for bit, and W data-parallel ranks each take a contiguous chunk of the same global
batch: together they see exactly what a single process sees.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ResnetlabError
from ..preprocessing import resize_for
from .base import FileImageSet, ImageSet
from .folder import BAD_ERRORS, SMALL_MAX, opened, report_bad

Batch = tuple[torch.Tensor, torch.Tensor]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs, machines and Python versions."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by ``mix_seed(*parts)``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def pixel_mean_of(data: ImageSet, chunk: int = 4096) -> torch.Tensor:
    """The per-pixel mean image (C, H, W) in [0, 1] units, for per-pixel mean subtraction."""
    if not isinstance(data, ImageSet):
        raise ResnetlabError(
            f"{data.source}: per-pixel mean subtraction (the default normalisation) needs "
            f"images of at most {SMALL_MAX} px held in memory, and these are larger; pass "
            "--normalisation imagenet or --normalisation MEAN,.../STD,..."
        )
    total = torch.zeros(data.images.shape[1:], dtype=torch.float64)
    for start in range(0, len(data), chunk):
        total += data.images[start : start + chunk].to(torch.float64).sum(0)
    return (total / (255.0 * max(len(data), 1))).float()


def draw_augment(n: int, pad: int, flip: bool, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random crop offsets (y, x) in 0..2*pad and flip flags for ``n`` samples."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    fl = torch.rand(n, generator=gen) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return oy, ox, fl


def crop_flip(
    x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, fl: torch.Tensor, pad: int
) -> torch.Tensor:
    """Zero-pad ``x`` (B, C, H, W) by ``pad`` and take the H x W window at (oy, ox) of each
    image, mirrored left-right where ``fl``: one gather over the whole batch."""
    b, c, h, w = x.shape
    if b == 0:  # a rank's empty share of a small last batch
        return x
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(b, c, -1)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(fl[:, None], cols.flip(1), cols)
    flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (B, H, W) into padded plane
    return padded.gather(2, flat.reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)


def _per_channel(values, device) -> torch.Tensor | None:
    if values is None:
        return None
    return torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1, 1, 1)


def sample_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Indices of one epoch: a permutation from (seed, epoch) alone, or file order."""
    return torch.randperm(n, generator=generator(seed, epoch)) if shuffle else torch.arange(n)


def _count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def _chunk(size: int, parts: int, part: int) -> tuple[int, int]:
    """Bounds of ``torch.tensor_split(range(size), parts)[part]``, so ranks split a batch alike."""
    small, extra = divmod(size, parts)
    start = part * small + min(part, extra)
    return start, start + small + (part < extra)


def _check_ranks(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ResnetlabError(
            f"batch_size {batch_size}, rank {rank}, world_size {world_size}: need batch_size >= 1 "
            "and 0 <= rank < world_size"
        )
    if batch_size % world_size:
        raise ResnetlabError(
            f"batch size {batch_size} does not split over {world_size} processes; use a "
            f"multiple of {world_size}"
        )


class TensorLoader:
    """Batches from a uint8 image tensor held on ``device``, augmented there with tensor ops."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        augment: bool | None = None,
        pad: int = 4,
        flip: bool = True,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        pixel_mean: torch.Tensor | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        shuffle: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        out_channels: int | None = None,
    ):
        if data.images.dtype != torch.uint8 or data.images.ndim != 4:
            raise ResnetlabError(f"{data.source}: images must be a uint8 tensor (N, C, H, W)")
        _check_ranks(batch_size, rank, world_size)
        if mean is not None and pixel_mean is not None:
            raise ResnetlabError("pass either mean (per channel) or pixel_mean (per pixel)")
        channels = int(data.images.shape[1])
        self.out_channels = out_channels or channels
        if self.out_channels not in (channels, 3 if channels == 1 else channels):
            raise ResnetlabError(
                f"out_channels={out_channels} on {channels}-channel images: use {channels}"
                + (" or 3" if channels == 1 else "")
            )
        self.device = torch.device(device)
        self.images = data.images.to(self.device).contiguous()  # a permuted view gathers 2x slower
        self.labels = data.labels.to(self.device)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.pad, self.flip, self.seed = pad, flip, seed
        self.mean = _per_channel(mean, self.device)
        self.std = _per_channel(std, self.device)
        self.pixel_mean = None if pixel_mean is None else pixel_mean.float().to(self.device)
        self.channels_last, self.dtype = channels_last, dtype
        if len(self) == 0:
            raise ResnetlabError(
                f"{data.source}: {len(data)} images make no batch of {batch_size}; "
                "use a smaller batch or drop_last=False"
            )

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return _count_batches(len(self.labels), self.batch_size, self.drop_last)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``: a permutation seeded by (seed, epoch) when shuffling."""
        return sample_order(len(self.labels), self.seed, epoch, self.shuffle)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield this rank's (x, y) for global batches ``start_batch..len-1`` of ``epoch``.

        The epoch's plan reaches the device in one non-blocking copy at the first batch and
        the rest is device work, so on CUDA the host never waits for the previous step (draw
        one epoch's batches on one stream: the copy is ordered on the first batch's stream).
        """
        if start_batch < 0:
            raise ResnetlabError(f"start_batch must be >= 0, not {start_batch}")
        plan, ends = self._plan(epoch, start_batch)
        if self.device.type == "cuda":
            plan = plan.pin_memory().to(self.device, non_blocking=True)
        else:
            plan = plan.to(self.device)
        start = 0
        for end in ends:
            rows = plan[0, start:end]
            x = self.images.index_select(0, rows)
            if self.augment:
                oy, ox, fl = plan[1, start:end], plan[2, start:end], plan[3, start:end] != 0
                x = crop_flip(x, oy, ox, fl, self.pad)
            yield self.normalise(x), self.labels.index_select(0, rows)
            start = end

    def _plan(self, epoch: int, start_batch: int) -> tuple[torch.Tensor, list[int]]:
        """This rank's rows of batches ``start_batch..`` (and their oy, ox, flip draws when
        augmenting) as one int64 CPU tensor, a column per sample, and each batch's end column:
        the per-batch draws of (seed, epoch, batch) computed up front, for a single copy."""
        order, n, size = self.order(epoch), len(self.labels), self.batch_size
        parts: list[list[torch.Tensor]] = [[] for _ in range(4 if self.augment else 1)]
        ends = [0]
        for i in range(start_batch, len(self)):
            full = min(size, n - i * size)
            a, b = _chunk(full, self.world_size, self.rank)
            parts[0].append(order[i * size + a : i * size + b])
            if self.augment:
                draws = draw_augment(full, self.pad, self.flip, generator(self.seed, epoch, i))
                for part, d in zip(parts[1:], draws, strict=True):
                    part.append(d[a:b])
            ends.append(ends[-1] + b - a)
        empty = torch.empty(0, dtype=torch.int64)
        return torch.stack([torch.cat(part or [empty]).long() for part in parts]), ends[1:]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) to float in [0, 1], mean/std applied, in the requested layout."""
        if x.shape[1] != self.out_channels:
            x = x.expand(-1, self.out_channels, -1, -1)
        x = x.to(torch.float32).div_(255.0)
        if self.pixel_mean is not None:
            x = x.sub_(self.pixel_mean)
        elif self.mean is not None:
            x = x.sub_(self.mean)
        if self.std is not None:
            x = x.div_(self.std)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(dtype=self.dtype, memory_format=fmt)


class FileDataset(torch.utils.data.Dataset):
    """Decodes (path, label) pairs; each item is (index, seed) so its randomness is fixed."""

    def __init__(self, data: FileImageSet, transform, mode: str):
        self.paths, self.labels = data.paths, data.labels
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        path = self.paths[index]
        try:
            with opened(path) as im:
                im = im.convert(self.mode)
        except BAD_ERRORS:
            return None, int(self.labels[index]), str(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(im), int(self.labels[index]), None


def _collate(items):
    good = [(x, y) for x, y, bad in items if bad is None]
    bad = [path for _, _, path in items if path is not None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


def file_transform(train: bool, size: int, resize: int, flip: bool, mean, std):
    """torchvision transforms: RandomResizedCrop + flip (train) or Resize + CenterCrop (eval)."""
    from torchvision.transforms import v2 as T

    if train:
        steps = [T.RandomResizedCrop(size, antialias=True)]
        steps += [T.RandomHorizontalFlip()] if flip else []
    else:
        steps = [T.Resize(resize, antialias=True), T.CenterCrop(size)]
    steps += [T.PILToTensor(), T.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        steps.append(T.Normalize(list(mean), list(std) if std is not None else [1.0] * len(mean)))
    return T.Compose(steps)


class FileLoader:
    """Batches of large images decoded by a DataLoader worker pool, same interface as
    ``TensorLoader``; the order and every random crop are fixed by (seed, epoch, batch)."""

    def __init__(
        self,
        data: FileImageSet,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        augment: bool | None = None,
        size: int = 224,
        resize: int | None = None,
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        shuffle: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        out_channels: int | None = None,
    ):
        _check_ranks(batch_size, rank, world_size)
        self.data = data
        self.device = torch.device(device)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.seed, self.num_workers = seed, num_workers
        self.channels_last, self.dtype = channels_last, dtype
        self.skipped: set[str] = set()  # files already reported as skipped
        channels = out_channels or data.in_channels
        mode = "L" if channels == 1 else "RGB"
        resize = resize or resize_for(size)
        augment = train if augment is None else augment
        self.dataset = FileDataset(
            data, file_transform(augment, size, resize, flip, mean, std), mode
        )
        if len(self) == 0:
            raise ResnetlabError(f"{data.source}: {len(data)} images make no batch of {batch_size}")

    def __len__(self) -> int:
        return _count_batches(len(self.data), self.batch_size, self.drop_last)

    def order(self, epoch: int) -> torch.Tensor:
        return sample_order(len(self.data), self.seed, epoch, self.shuffle)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield this rank's (x, y) for global batches ``start_batch..len-1`` of ``epoch``."""
        order = self.order(epoch).tolist()
        batches = []
        for i in range(start_batch, len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            items = [(j, mix_seed(self.seed, epoch, i, k)) for k, j in enumerate(index)]
            chunk = torch.tensor_split(torch.arange(len(items)), self.world_size)[self.rank]
            batches.append([items[k] for k in chunk.tolist()])
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y, bad in loader:
            new = [path for path in bad if path not in self.skipped]
            self.skipped.update(bad)  # each file is reported once, however many epochs
            report_bad(self.data.source, new, self.data.on_bad, total=len(self.skipped))
            if x is None:
                continue
            x = x.to(self.device, non_blocking=True)
            yield x.to(dtype=self.dtype, memory_format=fmt), y.to(self.device, non_blocking=True)


def make_loader(
    split: ImageSet | FileImageSet, batch_size: int, *, train: bool, device="cpu", **options
) -> TensorLoader | FileLoader:
    """A ``TensorLoader`` for an in-memory split, a ``FileLoader`` for files on disk."""
    if isinstance(split, ImageSet):
        return TensorLoader(split, batch_size, train=train, device=device, **options)
    return FileLoader(split, batch_size, train=train, device=device, **options)
