"""Hostile and unlucky manifests and caches: one image in two splits, a path with two labels,
a row linked to ``/dev/zero``, a million rows naming one file, a Latin-1 byte, a split emptied
by ``--on-bad skip``; decode caches under ``$RESNETLAB_HOME`` only, keyed by the source."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import FileImageSet, open_data, tensors
from resnetlab.data.preprocess import Preprocessing
from resnetlab.errors import ResnetlabError
from resnetlab.finetune.prepare import _prepare_split
from test_data_safety import write_folder  # the same small image folder


def write_images(root: Path, count: int = 8, size: int = 8) -> list[str]:
    """``root/img/<k>.png``: distinct random images; their relative paths."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            root / "img" / f"{k}.png"
        )
        names.append(f"img/{k}.png")
    return names


def manifest(root: Path, rows: list[str], header: str = "path,label,group,split") -> Path:
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def clean_rows(names: list[str]) -> list[str]:
    """Two classes, six train images and two test images, each its own group."""
    splits = ["train"] * 6 + ["test"] * 2
    return [f"{n},{'ab'[k % 2]},g{k},{splits[k]}" for k, n in enumerate(names)]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_a_clean_manifest_opens(tmp_path, home):
    root = manifest(tmp_path / "d", clean_rows(write_images(tmp_path / "d")))
    bundle = open_data(root)
    assert (len(bundle.train), len(bundle.test)) == (6, 2)


# --- item 2: one image, one split, one label -----------------------------------------------


def test_the_same_path_in_train_and_test_is_refused_naming_the_rows(tmp_path, home):
    names = write_images(tmp_path / "d")
    rows = clean_rows(names)
    rows[7] = f"{names[0]},a,other-patient,test"  # group B in test; group g0 in train
    with pytest.raises(ResnetlabError) as exc:
        open_data(manifest(tmp_path / "d", rows))
    text = one_line(exc)
    assert "lines 2 (img/0.png) and 9 (img/0.png)" in text and "two splits" in text


def test_the_same_path_with_two_labels_is_refused(tmp_path, home):
    names = write_images(tmp_path / "d")
    rows = [*clean_rows(names), f"./{names[2]},b,g2,train"]  # the same file, written otherwise
    with pytest.raises(ResnetlabError) as exc:
        open_data(manifest(tmp_path / "d", rows))
    text = one_line(exc)
    assert "lines 4 (img/2.png) and 10 (./img/2.png)" in text and "two labels ('a' and 'b')" in text


def test_a_link_to_a_train_image_listed_in_test_is_refused(tmp_path, home):
    names = write_images(tmp_path / "d")
    (tmp_path / "d" / "img" / "alias.png").symlink_to(tmp_path / "d" / names[0])
    rows = clean_rows(names)
    rows[7] = "img/alias.png,b,g9,test"
    with pytest.raises(ResnetlabError) as exc:
        open_data(manifest(tmp_path / "d", rows))
    text = one_line(exc)
    assert "lines 2 (img/0.png) and 9 (img/alias.png) name the same file" in text


def test_a_copy_of_a_train_image_in_test_is_refused_by_its_bytes(tmp_path, home):
    names = write_images(tmp_path / "d")
    copy = tmp_path / "d" / "img" / "copy.png"
    copy.write_bytes((tmp_path / "d" / names[3]).read_bytes())
    rows = clean_rows(names)
    rows[6] = "img/copy.png,b,patient-b,test"
    with pytest.raises(ResnetlabError) as exc:
        open_data(manifest(tmp_path / "d", rows))
    text = one_line(exc)
    assert "lines 5 (img/3.png) and 8 (img/copy.png) hold the same image" in text


def test_only_files_whose_size_another_split_shares_are_hashed(tmp_path, home, monkeypatch):
    import hashlib

    names = write_images(tmp_path / "d")
    (tmp_path / "d" / names[7]).write_bytes((tmp_path / "d" / names[7]).read_bytes() + b"\0")
    hashed = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, d: hashed.append(f.name) or real(f, d))
    open_data(manifest(tmp_path / "d", clean_rows(names)))
    sizes = {n: (tmp_path / "d" / n).stat().st_size for n in names}
    shared = {s for n, s in sizes.items() if n in names[6:]} & {sizes[n] for n in names[:6]}
    expected = sorted(str(tmp_path / "d" / n) for n in names if sizes[n] in shared)
    assert sorted(hashed) == expected and len(hashed) < len(names)


# --- items 9 and 10: every read bounded ----------------------------------------------------


@pytest.mark.parametrize("on_bad", ["error", "skip"])
def test_a_row_linked_to_dev_zero_is_never_read(tmp_path, home, on_bad):
    names = write_images(tmp_path / "d")
    (tmp_path / "d" / "img" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "d" / "img" / "fifo.png")  # would block a plain open() forever
    rows = [*clean_rows(names), "img/zero.png,a,gz,train", "img/fifo.png,b,gf,train"]
    start = time.perf_counter()
    if on_bad == "error":
        with pytest.raises(ResnetlabError) as exc:
            open_data(manifest(tmp_path / "d", rows))
        text = one_line(exc)
        assert "img/zero.png (line 10: not a regular file" in text and "img/fifo.png" in text
    else:
        with pytest.warns(UserWarning, match="img/zero.png"):
            bundle = open_data(manifest(tmp_path / "d", rows), on_bad="skip")
        assert len(bundle.train) == 6
    assert time.perf_counter() - start < 10


def test_a_row_above_the_size_limit_is_refused_before_reading(tmp_path, home, monkeypatch):
    names = write_images(tmp_path / "d")
    big = tmp_path / "d" / "img" / "big.png"
    with big.open("wb") as handle:  # sparse: 2 MiB declared, nothing written
        handle.truncate(2 * 2**20)
    monkeypatch.setenv("RESNETLAB_MAX_MEMBER_MIB", "1")
    with pytest.raises(ResnetlabError) as exc:
        open_data(manifest(tmp_path / "d", [*clean_rows(names), "img/big.png,a,gb,train"]))
    assert "img/big.png (line 10: 2 MiB, above the limit of 1 MiB" in one_line(exc)


def test_an_image_folder_file_linked_to_dev_zero_is_not_read(tmp_path, home):
    write_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "a" / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(ResnetlabError) as exc:
        open_data(tmp_path / "d")
    assert "zero.jpg" in one_line(exc)
    with pytest.warns(UserWarning, match="zero.jpg"):
        assert len(open_data(tmp_path / "d", on_bad="skip").train) == 6


def test_a_large_image_linked_to_dev_zero_is_not_read_when_resized(tmp_path):
    (tmp_path / "img").mkdir()
    paths = []
    for k in range(3):
        paths.append(tmp_path / "img" / f"{k}.png")
        Image.new("RGB", (80, 80), (40 * k, 9, 9)).save(paths[-1])
    paths.append(tmp_path / "img" / "zero.png")
    paths[-1].symlink_to("/dev/zero")
    part = FileImageSet(paths, torch.tensor([0, 1, 0, 1]), ["a", "b"], "large", 3, "skip")
    prep = Preprocessing(crop=32, resize=36, mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.warns(UserWarning, match="zero.png"):
        assert _prepare_split(part, prep).labels.tolist() == [0, 1, 0]


def test_a_million_rows_naming_one_file_are_refused_up_front(tmp_path, home):
    names = write_images(tmp_path / "d", count=1)
    rows = [f"{names[0]},a,g,train"] * 1_000_000
    manifest(tmp_path / "d", rows)
    start = time.perf_counter()
    with pytest.raises(ResnetlabError) as exc:
        open_data(tmp_path / "d")
    assert time.perf_counter() - start < 5  # before: minutes of decoding, 1.5 GB
    assert "lines 2 (img/0.png) and 3 (img/0.png) list the same path twice" in one_line(exc)


# --- item 13: one line, not a traceback ----------------------------------------------------


def test_a_latin1_manifest_names_the_line_and_the_encoding(tmp_path, home):
    names = write_images(tmp_path / "d")
    root = manifest(tmp_path / "d", clean_rows(names))
    text = (root / "manifest.csv").read_text().replace("g3", "caf\u00e9")
    (root / "manifest.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(ResnetlabError) as exc:
        open_data(root)
    text = one_line(exc)
    assert "line 5: byte 0xe9 is not UTF-8" in text and "save the manifest as UTF-8" in text


def test_finetune_skipping_every_test_row_says_the_split_is_empty(tmp_path, home, capsys):
    names = write_images(tmp_path / "d", size=8)
    rows = clean_rows(names)
    rows[6:] = ["img/gone1.png,a,g6,test", "img/gone2.png,b,g7,test"]
    root = manifest(tmp_path / "d", rows)
    argv = ["finetune", str(root), "--model", "resnet20", "--pretrained", "none", "--full-epochs",
            "1", "--out", str(tmp_path / "run"), "--on-bad", "skip", "--no-progress"]  # fmt: skip
    with pytest.warns(UserWarning, match="gone1.png"):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "the test split is empty after skipping its 2 unreadable image(s); fix their paths or "
        "files."
    )
    assert "Traceback" not in "\n".join(err)


def test_skipping_every_undecodable_test_image_says_the_split_is_empty(tmp_path, home):
    names = write_images(tmp_path / "d")
    for name in names[6:]:
        (tmp_path / "d" / name).write_bytes(b"not a png")
    with pytest.warns(UserWarning), pytest.raises(ResnetlabError) as exc:
        open_data(manifest(tmp_path / "d", clean_rows(names)), on_bad="skip")
    assert "the test split is empty after skipping its 2 unreadable image(s)" in one_line(exc)


# --- item 16: caches under RESNETLAB_HOME only ---------------------------------------------


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_nothing_is_written_beside_the_data(tmp_path, home):
    write_folder(tmp_path / "d")
    before = listing(tmp_path)
    first = open_data(tmp_path / "d")
    new = set(listing(tmp_path)) - set(before)
    assert new and all(p == "home" or p.startswith("home/") for p in new)  # nowhere else
    entries = list((home / "data" / "cache").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("d-")
    again = open_data(tmp_path / "d")
    assert torch.equal(again.train.images, first.train.images)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_a_read_only_data_folder_is_read_and_cached_under_the_home(tmp_path, home):
    ro = tmp_path / "ro"
    write_folder(ro / "d")
    names = write_images(ro / "m")
    manifest(ro / "m", clean_rows(names))
    modes = {p: p.stat().st_mode for p in [ro, *ro.rglob("*")]}
    for path in modes:
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        before = listing(ro)
        assert len(open_data(ro / "d").train) == 6 and len(open_data(ro / "m").train) == 6
        assert len(open_data(ro / "d").test) == 6  # from the cache
        assert listing(ro) == before
        assert len(list((home / "data" / "cache").iterdir())) == 1
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def test_a_changed_source_gets_a_new_entry_and_drops_the_stale_one(tmp_path, home):
    write_folder(tmp_path / "d")
    open_data(tmp_path / "d")
    (old,) = (home / "data" / "cache").iterdir()
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "d" / "train" / "a" / "0.jpg")
    bundle = open_data(tmp_path / "d")
    (new,) = (home / "data" / "cache").iterdir()
    assert new != old and int(bundle.train.images[0].min()) > 240


def test_the_cache_goes_under_the_root_a_caller_names(tmp_path, home):
    write_folder(tmp_path / "d")
    open_data(tmp_path / "d", root=tmp_path / "mine")
    assert len(list((tmp_path / "mine" / "cache").iterdir())) == 1 and not home.exists()


def test_a_failed_cache_write_leaves_no_entry(tmp_path, home, monkeypatch):
    write_folder(tmp_path / "d")

    def half_then_fail(obj, handle):
        handle.write(b"PK\x03\x04 half an entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensors.torch, "save", half_then_fail)
    with pytest.raises(ResnetlabError, match="no space left on the device"):
        open_data(tmp_path / "d")
    assert list((home / "data" / "cache").iterdir()) == []
    assert tensors.load_cache(tmp_path / "d") is None
