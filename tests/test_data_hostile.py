"""Hostile and unlucky input: link-chain and bomb archives, truncation, huge images, on_bad."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnetlab.artifact import Trained as LoadedModel
from resnetlab.cli import build_parser
from resnetlab.cli.finetune import given_options
from resnetlab.cli.train import parse_overrides
from resnetlab.data import FileImageSet, FileLoader, archive, folder, open_data
from resnetlab.data.preprocess import Preprocessing
from resnetlab.errors import ResnetlabError
from resnetlab.finetune import FinetuneOptions
from resnetlab.finetune.evaluate import _split_images
from resnetlab.finetune.predict import expand_inputs, predict_files
from resnetlab.finetune.prepare import _prepare_split
from resnetlab.train import TrainConfig, train
from test_data_safety import write_folder  # the same small image folder

SRC = Path(__file__).resolve().parents[1] / "src"
DEBIAN_PYTHON = Path("/usr/bin/python3")


def listing(root: Path) -> list[str]:
    """Every path under ``root`` (links not followed), to prove nothing new appeared."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- archives: links, escapes --------------------------------------------------------------


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _file(tf: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def link_chain_tar(dest: Path, outside: Path) -> Path:
    """The CVE-2025-4517 pattern: folders and symlinks whose expansion passes PATH_MAX, a
    link that climbs out through the chain, and a file written through that link."""
    comp, steps, path = "d" * 247, "abcdefghijklmnop", ""
    with tarfile.open(dest, "w") as tf:
        _file(tf, "data/train/a/0.txt", b"fine")
        for step in steps:
            folder_info = tarfile.TarInfo(os.path.join(path, comp))
            folder_info.type = tarfile.DIRTYPE
            tf.addfile(folder_info)
            tf.addfile(_symlink(os.path.join(path, step), comp))
            path = os.path.join(path, comp)
        long_link = os.path.join(*steps, "l" * 254)
        tf.addfile(_symlink(long_link, "../" * len(steps)))
        climb = "../" * (str(outside).count("/") + 8)
        tf.addfile(_symlink("escape", f"{long_link}/{climb}{str(outside).lstrip('/')}"))
        _file(tf, "escape/evil.txt", b"pwned")
    return dest


@pytest.mark.parametrize("how", ["read", "extract"])
def test_symlink_chain_tar_writes_nothing_outside(tmp_path, home, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = link_chain_tar(tmp_path / "chain.tar", outside)
    target = tmp_path / "out" / "target"
    before = listing(tmp_path)
    with pytest.raises(ResnetlabError, match=r"member 'a' is a symlink to 'd+'.*refusing"):
        if how == "read":
            open_data(bad)
        else:
            archive.extract(bad, target)
    assert not (outside / "evil.txt").exists()
    assert not target.exists()
    after = listing(tmp_path)
    assert [p for p in after if p not in before] == (["out"] if how == "extract" else [])
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]


@pytest.mark.parametrize(
    "members, named",
    [
        ([("data/../../evil.txt", b"x")], r"'data/\.\./\.\./evil\.txt' points outside"),
        ([("/tmp/abs-evil.txt", b"x")], r"'/tmp/abs-evil\.txt' has an absolute path"),
        ([("link", "OUTSIDE"), ("link/evil.txt", b"x")], r"'link' is a symlink to '/"),
        ([("inner", "data"), ("data/0.txt", b"x")], r"'inner' is a symlink to 'data'"),
    ],
)
def test_escapes_and_links_are_refused_by_name(tmp_path, members, named):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        _file(tf, "data/train/a/0.txt", b"fine")
        for name, what in members:
            if isinstance(what, bytes):
                _file(tf, name, what)
            else:
                tf.addfile(_symlink(name, str(outside) if what == "OUTSIDE" else what))
    target = tmp_path / "out" / "target"
    with pytest.raises(ResnetlabError, match=named):
        archive.extract(bad, target)
    assert listing(outside) == [] and not target.exists()
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("kind", ["hardlink", "fifo", "chardev"])
def test_hard_links_and_special_files_are_refused(tmp_path, kind):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        _file(tf, "data/a.txt", b"fine")
        info = tarfile.TarInfo("data/special")
        info.type = {"hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}.get(
            kind, tarfile.CHRTYPE
        )
        info.linkname = "data/a.txt" if kind == "hardlink" else ""
        tf.addfile(info)
    words = {"hardlink": "hard link", "fifo": "fifo", "chardev": "character device"}[kind]
    with pytest.raises(ResnetlabError, match=f"'data/special' is a {words}"):
        archive.extract(bad, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_zip_symlink_entry_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("data/train/a/0.txt", b"fine")
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc")
    with pytest.raises(ResnetlabError, match="'data/link' is a symlink"):
        archive.extract(bad, tmp_path / "target")
    with pytest.raises(ResnetlabError, match="'data/link' is a symlink"):
        list(archive.iter_files(bad))


def test_clean_zip_and_tar_extract_the_same_files(tmp_path):
    write_folder(tmp_path / "good")
    with tarfile.open(tmp_path / "good.tar.xz", "w:xz") as tf:
        tf.add(tmp_path / "good", arcname="data")
    with zipfile.ZipFile(tmp_path / "good.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((tmp_path / "good").rglob("*.jpg")):
            zf.write(path, "data/" + path.relative_to(tmp_path / "good").as_posix())
    a = archive.extract(tmp_path / "good.tar.xz", tmp_path / "t1")
    b = archive.extract(tmp_path / "good.zip", tmp_path / "t2")
    files = [p.relative_to(a) for p in sorted(a.rglob("*.jpg"))]
    assert len(files) == 12 and files == [p.relative_to(b) for p in sorted(b.rglob("*.jpg"))]
    for rel in files:
        original = (tmp_path / "good" / rel.relative_to("data")).read_bytes()
        assert (a / rel).read_bytes() == original == (b / rel).read_bytes()
        assert not (a / rel).is_symlink()


def test_no_extractall_or_filter_in_the_data_package():
    code = "".join(p.read_text() for p in (SRC / "resnetlab" / "data").glob("*.py"))
    assert "extractall(" not in code and "filter=" not in code


@pytest.mark.skipif(not DEBIAN_PYTHON.is_file(), reason="no /usr/bin/python3 here")
def test_archive_module_runs_on_the_system_python(tmp_path):
    """archive.py needs only the standard library: run it on /usr/bin/python3 (3.11.2 on
    Debian 12, whose tarfile has no extraction filters) against a clean and a hostile tar."""
    write_folder(tmp_path / "good")
    with tarfile.open(tmp_path / "good.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "good", arcname="data")
    (tmp_path / "outside").mkdir()
    link_chain_tar(tmp_path / "chain.tar", tmp_path / "outside")
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        for name in ("resnetlab", "resnetlab.data"):
            pkg = types.ModuleType(name); pkg.__path__ = []; sys.modules[name] = pkg
        def load(name, path):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        errors = load("resnetlab.errors", {str(SRC / "resnetlab" / "errors.py")!r})
        archive = load("resnetlab.data.archive", {str(SRC / "resnetlab/data/archive.py")!r})
        out = archive.extract({str(tmp_path / "good.tar.gz")!r}, {str(tmp_path / "t")!r})
        print(sys.version.split()[0], len(list(out.rglob("*.jpg"))))
        try:
            archive.extract({str(tmp_path / "chain.tar")!r}, {str(tmp_path / "t2")!r})
        except errors.ResnetlabError as exc:
            print("refused", "symlink" in str(exc))
        """
    )
    done = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    (version, count), refused = done.stdout.splitlines()[0].split(), done.stdout.splitlines()[1]
    assert version.startswith("3.") and count == "12" and refused == "refused True"
    assert not (tmp_path / "outside" / "evil.txt").exists() and not (tmp_path / "t2").exists()


# --- bombs -----------------------------------------------------------------------------------


def test_zip_bomb_member_is_refused_by_name_and_bound(tmp_path, home, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 2**20)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/train/a/0.png", b"\0" * (3 * 2**20))
    assert bomb.stat().st_size < 10_000
    match = r"member 'data/train/a/0\.png' inflates past the per-member limit of 1 MiB"
    with pytest.raises(ResnetlabError, match=match):
        open_data(bomb)
    with pytest.raises(ResnetlabError, match=match):
        archive.extract(bomb, tmp_path / "target")
    assert not (tmp_path / "target").exists()
    monkeypatch.setenv("RESNETLAB_MAX_MEMBER_MIB", "4")  # the documented way to raise it
    assert (archive.extract(bomb, tmp_path / "target") / "data/train/a/0.png").stat().st_size


def test_tar_bomb_whole_archive_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 2**20)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        for i in range(5):
            _file(tf, f"data/{i}.bin", b"\0" * 300_000)
    with pytest.raises(ResnetlabError, match=r"'data/3\.bin' .*whole-archive limit of 1 MiB"):
        archive.extract(bomb, tmp_path / "target")


def test_bytes_read_are_counted_when_a_header_lies(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 2**20)
    member = archive.Member("x", "x", False, 10, lambda: io.BytesIO(b"\0" * (2 * 2**20)))
    budget = archive.Budget(tmp_path / "a.zip")
    budget.declare(member)  # 10 bytes declared: passes
    seen: list[bytes] = []
    with pytest.raises(ResnetlabError, match="'x' inflates past the per-member limit"):
        archive.copy_member(member, seen.append, budget)
    assert sum(map(len, seen)) <= 2**20  # stopped at the bound, not at the end


# --- truncated archives --------------------------------------------------------------------


def _truncated_tar(tmp_path: Path, cut: float = 1 / 6) -> Path:
    """A .tar.gz of noise images cut short: at 1/6 the cut falls inside the first image's
    bytes (read by the member reader), at 1/2 between later members (met while listing)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "good" / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "good" / split / c / f"{i}.png")
    dest = tmp_path / "cut.tar.gz"
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(tmp_path / "good", arcname="data")
    dest.write_bytes(dest.read_bytes()[: int(dest.stat().st_size * cut)])
    return dest


@pytest.mark.parametrize("cut", [1 / 6, 1 / 2])
def test_truncated_tar_gz_is_one_redownload_error(tmp_path, home, cut):
    cut = _truncated_tar(tmp_path, cut)
    for call in (lambda: open_data(cut), lambda: archive.extract(cut, tmp_path / "t")):
        with pytest.raises(ResnetlabError, match="truncated or corrupt.*re-download it") as e:
            call()
        assert "\n" not in str(e.value) and str(cut) in str(e.value)
    zipped = tmp_path / "cut.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("data/train/a/0.png", os.urandom(5000))
    zipped.write_bytes(zipped.read_bytes()[:3000])
    with pytest.raises(ResnetlabError, match="re-download it"):
        open_data(zipped)


@pytest.mark.slow
def test_truncated_tar_gz_through_the_cli(tmp_path):
    cut = _truncated_tar(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC), "RESNETLAB_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "resnetlab.cli", "train", "--data", str(cut), "--max-iters", "1",
         "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "re-download it" in lines[0] and "Traceback" not in done.stderr


# --- large and huge images -----------------------------------------------------------------


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` grey pixels: a few dozen bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path):
    huge = png_header(tmp_path / "huge.png", 9000, 8000)  # 72 MP: under Pillow's own limit
    assert huge.stat().st_size < 200
    with pytest.raises(folder.BadImage, match=r"9000x8000 is 72 megapixels, above the limit of 64"):
        folder.decode(huge.read_bytes())
    bomb = png_header(tmp_path / "bomb.png", 50_000, 50_000)
    with pytest.raises(folder.BadImage, match="decompression-bomb limit") as e:
        folder.decode(bomb.read_bytes())
    assert "object at 0x" not in str(e.value)


def test_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    Image.new("RGB", (1024, 768), (200, 10, 30)).save(tmp_path / "big.jpg", quality=90)
    data = (tmp_path / "big.jpg").read_bytes()
    assert folder.decode(data).shape == (768, 1024, 3)
    small = folder.decode(data, min_side=200)
    assert small.shape == (384, 512, 3)  # 1/2 scale: 1/4 would make a side 192 < 200
    assert abs(small.astype(float).mean(axis=(0, 1)) - [200, 10, 30]).max() < 3


def _large_set(tmp_path: Path, n: int, bad: dict[int, str]) -> FileImageSet:
    paths = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        if bad.get(i) == "huge":
            png_header(path, 50_000, 50_000)
        elif bad.get(i) == "junk":
            path.write_text("not an image")
        else:
            Image.new("RGB", (80, 72), (10 * i, 50, 90)).save(path)
        paths.append(path)
    return FileImageSet(paths, torch.arange(n) % 2, ["a", "b"], "large", 3)


def test_finetune_resize_names_every_bad_file_without_reprs(tmp_path):
    part = _large_set(tmp_path, 6, {1: "huge", 3: "junk", 4: "huge"})
    prep = Preprocessing(crop=32, resize=36, mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ResnetlabError) as e:
        _prepare_split(part, prep)
    message = str(e.value)
    for name in ("1.png", "3.png", "4.png"):
        assert name in message
    assert "3 unreadable" in message and "--on-bad skip" in message
    assert "object at 0x" not in message and "\n" not in message
    part.on_bad = "skip"
    with pytest.warns(UserWarning, match=r"skipped 3 .*1\.png, .*3\.png, .*4\.png"):
        kept = _prepare_split(part, prep)
    assert kept.labels.tolist() == [0, 0, 1] and kept.images.shape == (3, 3, 32, 32)


def test_file_loader_names_huge_image_and_skips_each_file_once(tmp_path):
    data = _large_set(tmp_path, 4, {2: "huge"})
    with pytest.raises(ResnetlabError, match=r"2\.png; .*--on-bad skip"):
        list(FileLoader(data, 4, train=False, size=16, num_workers=0).epoch(0))
    data.on_bad = "skip"
    loader = FileLoader(data, 2, train=True, size=16, num_workers=0)
    with pytest.warns(UserWarning) as record:
        for epoch in range(3):
            sizes = [len(y) for _, y in loader.epoch(epoch)]
            assert sum(sizes) == 3
    messages = [str(w.message) for w in record if "skipped" in str(w.message)]
    assert len(messages) == 1 and "2.png" in messages[0]


def test_train_on_large_images_with_default_normalisation_gives_the_hint(tmp_path, home):
    root = tmp_path / "big"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (80, 80), (100 * (c == "b"), 20 * i, 50)).save(
                    root / split / c / f"{i}.png"
                )
    base = {"data": str(root), "model": "resnet20", "max_iters": 1, "batch_size": 2,
            "num_workers": 0, "progress": False, "eval_every": 1, "checkpoint_every": 1}
    with pytest.raises(ResnetlabError, match="--normalisation imagenet"):
        train(TrainConfig(**base, out_dir=str(tmp_path / "r1")))
    result = train(TrainConfig(**base, normalisation="imagenet", out_dir=str(tmp_path / "r2")))
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.metrics["test_loss"]))


# --- on_bad everywhere, predict on empty folders -------------------------------------------


def test_on_bad_is_a_setting_and_a_flag(tmp_path):
    assert TrainConfig().on_bad == "error"
    with pytest.raises(ResnetlabError, match="on_bad"):
        TrainConfig(on_bad="ignore")
    with pytest.raises(ResnetlabError, match="on_bad must be 'error' or 'skip'"):
        open_data(tmp_path, on_bad="ignore")
    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--on-bad", "skip"])
    assert parse_overrides(args)["on_bad"] == "skip"
    assert parser.parse_args(["finetune", "d", "--on-bad", "skip"]).on_bad == "skip"
    assert "on_bad" not in vars(parser.parse_args(["lr-find", "d"]))  # the dataclass decides
    given = given_options(parser.parse_args(["lr-find", "d", "--on-bad", "skip"]))
    assert given["on_bad"] == "skip"
    assert FinetuneOptions(data="d", out_dir="o").on_bad == "error"
    assert parser.parse_args(["evaluate", "r", "d", "--on-bad", "skip"]).on_bad == "skip"
    assert parser.parse_args(["evaluate", "r", "d"]).on_bad == "error"
    assert parser.parse_args(["predict", "r", "a.png"]).on_bad == "skip"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "r", "a.png", "--on-bad", "maybe"])


def test_predict_refuses_a_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images")
    for name in ("empty", "notes"):
        with pytest.raises(ResnetlabError, match=rf"{name}: folder has no images \(\.jpg, "):
            expand_inputs([str(tmp_path / name)])
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    assert expand_inputs([str(tmp_path / "one.png")]) == [tmp_path / "one.png"]


def test_predict_names_an_oversized_image_and_honours_on_bad(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    prep = Preprocessing(crop=16, resize=18, mean=[0.5] * 3, std=[0.25] * 3)
    loaded = LoadedModel(model.eval(), {}, prep, ["a", "b", "c", "d"], tmp_path / "m.pt")
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "ok.png")
    huge = png_header(tmp_path / "huge.png", 12_000, 12_000)  # 144 MP in a few bytes
    paths = [tmp_path / "ok.png", huge]
    predictions, failed = predict_files(loaded, paths)
    assert [p.path for p in predictions] == [str(tmp_path / "ok.png")]
    assert failed == [(str(huge), failed[0][1])] and "144 megapixels" in failed[0][1]
    with pytest.raises(ResnetlabError, match=r"huge\.png: .*144 megapixels.*--on-bad skip"):
        predict_files(loaded, paths, on_bad="error")


def test_evaluate_split_images_error_or_skip(tmp_path):
    part = _large_set(tmp_path, 4, {1: "junk"})
    prep = Preprocessing(crop=16, resize=18, mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ResnetlabError, match=r"1\.png; .*--on-bad skip"):
        _split_images(part, prep)
    part.on_bad = "skip"
    with pytest.warns(UserWarning, match=r"skipped 1 .*1\.png"):
        images, labels, _ = _split_images(part, prep)
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 0, 1]
    with pytest.raises(ResnetlabError, match="on-bad"):
        FinetuneOptions(data="d", out_dir=str(tmp_path / "o"), on_bad="ignore")
    assert FinetuneOptions(data="d", out_dir=str(tmp_path / "o")).on_bad == "error"
