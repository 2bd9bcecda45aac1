"""Loaders: deterministic, resumable, split identically across ranks, augmenting correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnetlab.data import (
    FileImageSet,
    FileLoader,
    ImageSet,
    TensorLoader,
    make_loader,
    pixel_mean_of,
)
from resnetlab.data.loaders import _chunk, crop_flip, draw_augment, generator
from resnetlab.errors import ResnetlabError


def toy(n: int = 50, channels: int = 3, size: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % 5, list("abcde"), "toy")


def collect(loader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch, start))


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def test_length_and_drop_last():
    data = toy(50)
    assert len(TensorLoader(data, 16, train=True)) == 3  # drop_last by default when training
    assert len(TensorLoader(data, 16, train=False)) == 4
    sizes = [len(y) for _, y in TensorLoader(data, 16, train=False).epoch(0)]
    assert sizes == [16, 16, 16, 2]


def test_deterministic_and_epochs_differ():
    a = collect(TensorLoader(toy(), 10, train=True, seed=7), 0)
    b = collect(TensorLoader(toy(), 10, train=True, seed=7), 0)
    c = collect(TensorLoader(toy(), 10, train=True, seed=7), 1)
    d = collect(TensorLoader(toy(), 10, train=True, seed=8), 0)
    assert same(a, b) and not same(a, c) and not same(a, d)
    labels = torch.cat([y for _, y in a])
    assert sorted(labels.tolist()) == sorted((torch.arange(50) % 5).tolist())  # a permutation


def test_resume_reproduces_tail():
    loader = TensorLoader(toy(), 10, train=True, seed=1)
    full = collect(loader, 3)
    for k in (0, 2, 4):
        assert same(collect(TensorLoader(toy(), 10, train=True, seed=1), 3, k), full[k:])
    assert collect(loader, 3, len(loader)) == []


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_together_see_the_single_process_batches(world):
    single = collect(TensorLoader(toy(), 8, train=True, seed=2), 1)
    ranks = [
        collect(TensorLoader(toy(), 8, train=True, seed=2, rank=r, world_size=world), 1)
        for r in range(world)
    ]
    assert all(len(r) == len(single) for r in ranks)
    for i, (x, y) in enumerate(single):
        assert all(len(r[i][1]) == 8 // world for r in ranks)
        assert torch.equal(torch.cat([r[i][0] for r in ranks]), x)
        assert torch.equal(torch.cat([r[i][1] for r in ranks]), y)


def test_world_size_must_divide_batch():
    with pytest.raises(ResnetlabError, match="multiple of 3"):
        TensorLoader(toy(), 8, train=True, world_size=3)


def test_crop_is_shifted_window_of_zero_padded_image_and_flip_flips():
    data = toy(64, size=6)
    loader = TensorLoader(data, 64, train=True, shuffle=False, seed=5, pad=2)
    ((x, _),) = collect(loader, 0)
    oy, ox, fl = draw_augment(64, 2, True, generator(5, 0, 0))
    padded = F.pad(data.images.float() / 255, (2, 2, 2, 2))
    assert 0 < int(fl.sum()) < 64 and len(set(oy.tolist())) == 5  # all offsets 0..4 drawn
    for i in range(64):
        window = padded[i, :, oy[i] : oy[i] + 6, ox[i] : ox[i] + 6]
        expected = window.flip(-1) if fl[i] else window
        assert torch.equal(x[i], expected)
    # Off-centre windows bring in zero padding.
    shifted = (oy != 2) | (ox != 2)
    assert (x[shifted] == 0).any()


def test_a_rank_with_an_empty_share_of_the_last_batch_gets_an_empty_batch():
    data = toy(9, size=6)  # batch 8 leaves a last batch of 1 for 4 ranks: three get nothing
    loader = TensorLoader(data, 8, train=True, drop_last=False, world_size=4, rank=3)
    batches = collect(loader, 0)
    assert [x.shape[0] for x, _ in batches] == [2, 0]


def test_crop_flip_direct():
    img = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    out = crop_flip(img, torch.tensor([1]), torch.tensor([0]), torch.tensor([False]), pad=1)
    assert out[0, 0, 0].tolist() == [0, 0, 1, 2] and out[0, 0, 1].tolist() == [0, 4, 5, 6]
    flipped = crop_flip(img, torch.tensor([1]), torch.tensor([0]), torch.tensor([True]), pad=1)
    assert torch.equal(flipped, out.flip(-1))


def test_eval_has_no_augmentation_and_keeps_order():
    data = toy(20)
    ((x, y),) = collect(TensorLoader(data, 20, train=False), 0)
    assert torch.equal(x, data.images.float() / 255) and torch.equal(y, data.labels)


def test_normalisation_and_pixel_mean():
    data = toy(40)
    pm = pixel_mean_of(data)
    assert pm.shape == (3, 8, 8)
    assert torch.allclose(pm, data.images.double().mean(0).float() / 255, atol=1e-6)
    ((x, _),) = collect(TensorLoader(data, 40, train=False, pixel_mean=pm), 0)
    assert x.mean(0).abs().max() < 1e-5  # per-pixel mean subtracted
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    ((z, _),) = collect(TensorLoader(data, 40, train=False, mean=mean, std=std), 0)
    ref = (data.images.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]
    assert torch.allclose(z, ref, atol=1e-6)


def test_grey_to_three_channels_layout_and_dtype():
    data = toy(12, channels=1)
    loader = TensorLoader(
        data, 4, train=False, out_channels=3, channels_last=True, dtype=torch.bfloat16
    )
    x, _ = next(loader.epoch(0))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ResnetlabError, match="out_channels"):
        TensorLoader(toy(4), 2, train=False, out_channels=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    cpu = collect(TensorLoader(toy(), 10, train=True, seed=4), 0)
    gpu = collect(TensorLoader(toy(), 10, train=True, seed=4, device="cuda"), 0)
    assert all(torch.equal(a[0], b[0].cpu()) for a, b in zip(cpu, gpu, strict=True))


def per_batch_reference(loader: TensorLoader, epoch: int, start: int = 0) -> list:
    """The loader's earlier algorithm, batch by batch: index, draws and copies for each."""
    order, out = loader.order(epoch), []
    for i in range(start, len(loader)):
        index = order[i * loader.batch_size : (i + 1) * loader.batch_size]
        mine = torch.tensor_split(torch.arange(len(index)), loader.world_size)[loader.rank]
        rows = index[mine].to(loader.device)
        x = loader.images[rows]
        if loader.augment:
            gen = generator(loader.seed, epoch, i)
            draws = draw_augment(len(index), loader.pad, loader.flip, gen)
            oy, ox, fl = (d[mine].to(loader.device) for d in draws)
            x = crop_flip(x, oy, ox, fl, loader.pad)
        out.append((loader.normalise(x), loader.labels[rows]))
    return out


PLANNED = {
    "train": (dict(train=True), 1, 0),
    "train-no-flip-pad-2": (dict(train=True, flip=False, pad=2), 1, 0),
    "eval": (dict(train=False), 1, 0),
    "eval-shuffled": (dict(train=False, shuffle=True), 1, 0),
    "two-ranks": (dict(train=True), 2, 0),
    "resumed": (dict(train=True), 1, 3),
    "two-ranks-resumed-partial-last": (dict(train=True, drop_last=False), 2, 2),
    "four-ranks-uneven-last": (dict(train=False), 4, 0),
}


@pytest.mark.parametrize("case", PLANNED)
def test_planned_epoch_is_bit_identical_to_per_batch_logic(case):
    options, world, start = PLANNED[case]
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    for rank in range(world):
        loader = TensorLoader(
            toy(), 8, seed=11, mean=mean, std=std, rank=rank, world_size=world, **options
        )
        for epoch in (0, 5):
            got, want = collect(loader, epoch, start), per_batch_reference(loader, epoch, start)
            assert len(got) == len(loader) - start and same(got, want)
            assert all(x.dtype == wx.dtype for (x, _), (wx, _) in zip(got, want, strict=True))


def test_rank_chunks_match_tensor_split():
    for size in range(20):
        for parts in range(1, 6):
            for part, chunk in enumerate(torch.tensor_split(torch.arange(size), parts)):
                a, b = _chunk(size, parts, part)
                assert torch.equal(torch.arange(size)[a:b], chunk)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_epoch_needs_no_host_sync_after_its_first_batch():
    data = toy(200)
    cases = [  # (options, start_batch)
        (dict(train=True, seed=3, mean=[0.5] * 3, std=[0.2] * 3), 0),
        (dict(train=False, pixel_mean=pixel_mean_of(data)), 0),
        (dict(train=True, seed=3, rank=1, world_size=2), 4),
        (dict(train=True, channels_last=True, dtype=torch.bfloat16), 0),
    ]
    for options, start in cases:
        loader = TensorLoader(data, 16, device="cuda", **options)
        for epoch in range(3):
            batches = loader.epoch(epoch, start)
            first = next(batches)  # the epoch's plan is copied here, without blocking
            torch.cuda.set_sync_debug_mode("error")
            try:
                rest = list(batches)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            got = [(x.cpu(), y.cpu()) for x, y in [first, *rest]]
            want = [(x.cpu(), y.cpu()) for x, y in per_batch_reference(loader, epoch, start)]
            assert len(got) == len(loader) - start and same(got, want)


# --- FileLoader ----------------------------------------------------------------------------


def file_set(root: Path, n: int = 12) -> FileImageSet:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("RGB", (40, 30), (i * 20, 255 - i * 20, 128)).save(path)
        paths.append(path)
    return FileImageSet(paths, torch.arange(n) % 3, ["x", "y", "z"], str(root))


def test_file_loader_deterministic_resumable_and_split(tmp_path):
    data = file_set(tmp_path)
    opts = dict(train=True, size=16, seed=3, num_workers=0)
    full = collect(FileLoader(data, 4, **opts), 2)
    assert len(full) == 3 and full[0][0].shape == (4, 3, 16, 16)
    assert same(collect(FileLoader(data, 4, **opts), 2), full)
    assert same(collect(FileLoader(data, 4, **opts), 2, 1), full[1:])
    assert not same(collect(FileLoader(data, 4, **opts), 3), full)
    halves = [collect(FileLoader(data, 4, rank=r, world_size=2, **opts), 2) for r in (0, 1)]
    for i, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), x)
        assert torch.equal(torch.cat([halves[0][i][1], halves[1][i][1]]), y)


def test_file_loader_eval_with_workers(tmp_path):
    data = file_set(tmp_path, 6)
    loader = make_loader(
        data, 3, train=False, size=16, num_workers=2, mean=[0.5] * 3, std=[0.5] * 3
    )
    assert isinstance(loader, FileLoader)
    batches = collect(loader, 0)
    assert [y.tolist() for _, y in batches] == [[0, 1, 2], [0, 1, 2]]
    first = batches[0][0][0]  # image 0 is (0, 255, 128): normalised to (-1, 1, ~0)
    assert torch.allclose(first[:, 8, 8], torch.tensor([-1.0, 1.0, 0.0039]), atol=1e-3)


def test_file_loader_bad_image_error_or_skip(tmp_path):
    data = file_set(tmp_path, 4)
    data.paths[2].write_bytes(data.paths[2].read_bytes()[:40])
    with pytest.raises(ResnetlabError, match=r"2\.png"):
        collect(FileLoader(data, 4, train=False, size=16, num_workers=0), 0)
    data.on_bad = "skip"
    with pytest.warns(UserWarning, match=r"skipped 1 .*2\.png"):
        ((x, y),) = collect(FileLoader(data, 4, train=False, size=16, num_workers=0), 0)
    assert y.tolist() == [0, 1, 0]


def test_make_loader_picks_tensor_loader():
    assert isinstance(make_loader(toy(), 5, train=True), TensorLoader)
