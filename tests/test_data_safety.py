"""Bad input: hostile archives, broken images, inconsistent data; and the decode cache."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.data import archive, folder, open_data, tensors
from resnetlab.errors import ResnetlabError


def write_folder(root: Path, classes=("a", "b"), per_class: int = 3, size: int = 8) -> None:
    for split in ("train", "test"):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = Image.new("RGB", (size, size), (60 * c, 30 * i, 9))
                img.save(root / split / cls / f"{i}.jpg", quality=90)


# --- hostile archives ----------------------------------------------------------------------


def _tar_with(dest: Path, good: Path, evil: tarfile.TarInfo, payload: bytes = b"") -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(good, arcname="data")
        evil.size = len(payload) if evil.isreg() else 0
        tf.addfile(evil, io.BytesIO(payload) if evil.isreg() else None)
    return dest


def _evil(kind: str, tmp_path: Path) -> tarfile.TarInfo:
    if kind == "dotdot":
        return tarfile.TarInfo("data/../../evil.txt")
    if kind == "absolute":
        return tarfile.TarInfo(str(tmp_path / "abs-evil.txt"))
    info = tarfile.TarInfo("data/train/a/link")
    info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
    info.linkname = "/etc" if kind == "symlink" else "../../../../etc/passwd"
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
@pytest.mark.parametrize("how", ["read", "extract"])
def test_hostile_tar_is_refused_and_writes_nothing(tmp_path, home, kind, how):
    write_folder(tmp_path / "good")
    bad = _tar_with(tmp_path / "bad.tar.gz", tmp_path / "good", _evil(kind, tmp_path), b"x")
    target = tmp_path / "out" / "target"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ResnetlabError, match="refusing"):
        if how == "read":
            open_data(bad)
        else:
            archive.extract(bad, target)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs-evil.txt").exists()
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before + (
        ["out"] if how == "extract" else []
    )
    if how == "extract":
        assert list((tmp_path / "out").iterdir()) == []  # no temp folder left behind


def test_hostile_zip_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("data/train/a/0.png", b"not really")
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(ResnetlabError, match=r"\.\."):
        archive.extract(bad, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "target").exists()


def test_safe_archive_extracts(tmp_path):
    write_folder(tmp_path / "good")
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        tf.add(tmp_path / "good", arcname="data")
    out = archive.extract(good, tmp_path / "target")
    assert (out / "data" / "train" / "b" / "2.jpg").is_file()


# --- broken images and inconsistent data ------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_truncated_jpeg_reported_by_path_error_or_skip(tmp_path, home):
    write_folder(tmp_path / "d")
    broken = tmp_path / "d" / "train" / "b" / "1.jpg"
    _truncate(broken)
    with pytest.raises(ResnetlabError, match=r"1 unreadable.*train/b/1\.jpg.*on_bad='skip'"):
        open_data(tmp_path / "d")
    with pytest.warns(UserWarning, match=r"skipped 1 .*train/b/1\.jpg"):
        bundle = open_data(tmp_path / "d", on_bad="skip")
    assert len(bundle.train) == 5 and len(bundle.test) == 6
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ResnetlabError, match="unreadable"):  # the cache remembers it
        open_data(tmp_path / "d")


def test_empty_class_folder(tmp_path, home):
    write_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "c").mkdir()
    with pytest.raises(ResnetlabError, match="class folder train/c/ has no images"):
        open_data(tmp_path / "d")


def test_missing_train_split(tmp_path, home):
    write_folder(tmp_path / "d")
    (tmp_path / "d" / "train").rename(tmp_path / "d" / "val")
    with pytest.raises(ResnetlabError, match="no train split"):
        open_data(tmp_path / "d")


def test_mismatched_sizes(tmp_path, home):
    write_folder(tmp_path / "d")
    Image.new("RGB", (9, 8)).save(tmp_path / "d" / "test" / "a" / "odd.png")
    with pytest.raises(ResnetlabError, match=r"odd\.png is 8x9 .* resize"):
        open_data(tmp_path / "d")


@pytest.mark.parametrize("bad_label", [2, -1])
def test_label_out_of_range(tmp_path, bad_label):
    labels = np.array([[0], [1], [bad_label]])
    np.savez(tmp_path / "x.npz", train_images=np.zeros((3, 4, 4), np.uint8), train_labels=labels)
    with pytest.raises(ResnetlabError, match=f"label {bad_label} at index 2"):
        open_data(tmp_path / "x.npz", class_names=["no", "yes"])


def test_npz_missing_labels(tmp_path):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ResnetlabError, match="train_labels is missing"):
        open_data(tmp_path / "x.npz")


# --- the decode cache ----------------------------------------------------------------------


@pytest.fixture()
def count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    real = folder.decode

    def counting(data):
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(folder, "decode", counting)
    return calls


def test_cache_built_once_reused_and_invalidated(tmp_path, home, count_decodes):
    write_folder(tmp_path / "d")
    first = open_data(tmp_path / "d")
    assert count_decodes[0] == 12
    (cache,) = (home / "data" / "cache").iterdir()  # under $RESNETLAB_HOME, never beside the data
    mtime = cache.stat().st_mtime_ns
    second = open_data(tmp_path / "d")
    assert count_decodes[0] == 12 and cache.stat().st_mtime_ns == mtime
    assert (second.train.images == first.train.images).all()
    # Change one image: everything is decoded again and the new pixels show.
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "d" / "train" / "a" / "0.jpg")
    third = open_data(tmp_path / "d")
    assert count_decodes[0] == 24 and int(third.train.images[0].min()) > 240


def test_corrupt_cache_is_rebuilt(tmp_path, home, count_decodes):
    write_folder(tmp_path / "d")
    open_data(tmp_path / "d")
    (cache,) = (home / "data" / "cache").iterdir()
    cache.write_bytes(b"garbage")
    assert len(open_data(tmp_path / "d").train) == 6
    assert count_decodes[0] == 24


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_read_only_source_uses_cache_folder(tmp_path, home, count_decodes):
    ro = tmp_path / "ro"
    write_folder(ro / "d")
    ro.chmod(0o555)
    try:
        open_data(ro / "d")
        open_data(ro / "d")
        assert list(ro.iterdir()) == [ro / "d"]  # nothing written beside the data
        caches = list((home / "data" / "cache").iterdir())
        assert len(caches) == 1 and caches[0].name.endswith(tensors.SUFFIX)
        assert count_decodes[0] == 12
    finally:
        ro.chmod(0o755)
