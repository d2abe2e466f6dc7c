"""Data: IDX parsing, Fashion-MNIST, image folders, DataConfig/build_dataset."""

from __future__ import annotations

import gzip
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdiff.data import (
    CLASS_NAMES,
    DataConfig,
    FashionMNIST,
    ImageFolder,
    build_dataset,
    read_idx,
)

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = (FMNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file()


def write_idx(path: Path, array: np.ndarray, type_code: int, big_endian_dtype: str) -> None:
    """Write an IDX file by hand: 0, 0, type code, ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(big_endian_dtype).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_read_idx_uint8_plain_and_gz(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    write_idx(tmp_path / name, array, 0x08, "u1")
    out = read_idx(tmp_path / name)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    write_idx(tmp_path / "ints.idx", array, 0x0C, ">i4")
    np.testing.assert_array_equal(read_idx(tmp_path / "ints.idx").numpy(), array)


def test_read_idx_rejects_bad_magic(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad.idx")


def _write_fake_fmnist(root: Path, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no zero pixels inside
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x08, "u1")
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x08, "u1")
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fmnist_from_env_folder_pads_28_to_32(tmp_path, monkeypatch, gz):
    images, labels = _write_fake_fmnist(tmp_path, n=6, gz=gz)
    monkeypatch.setenv("LATENTDIFF_FMNIST", str(tmp_path))
    ds = FashionMNIST(split="test")
    assert ds.images.shape == (6, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.images[:, 0, 2:30, 2:30].numpy(), images)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (ds.images[:, 0][:, border] == 0).all()
    np.testing.assert_array_equal(ds.labels.numpy(), labels.astype(np.int64))


def test_fmnist_other_sizes_resize(tmp_path):
    _write_fake_fmnist(tmp_path, n=3, gz=True)
    assert FashionMNIST(root=str(tmp_path), image_size=28).images.shape == (3, 1, 28, 28)
    assert FashionMNIST(root=str(tmp_path), image_size=16).images.shape == (3, 1, 16, 16)


def test_fmnist_missing_root_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(root=str(missing))
    assert str(missing) in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_fmnist_missing_files_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(root=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian dataset-fashion-mnist not installed")
def test_fmnist_real_test_split():
    ds = FashionMNIST(root=str(FMNIST_ROOT), split="test")
    assert len(ds) == 10_000 and len(CLASS_NAMES) == ds.num_classes == 10
    assert ds.images.shape == (10_000, 1, 32, 32) and ds.channels == 1 and ds.image_size == 32
    assert sorted(ds.labels.unique().tolist()) == list(range(10))
    item = ds[0]
    assert item["x"].shape == (1, 32, 32) and item["x"].dtype == torch.float32
    assert item["x"].min() >= -1 and item["x"].max() <= 1
    assert (item["x"][:, :2] == -1).all() and (item["x"][:, :, -2:] == -1).all()  # black padding
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    index = torch.tensor([3, 0, 9_999, 3])
    batch = ds.get_batch(index)
    torch.testing.assert_close(batch["x"], torch.stack([ds[i]["x"] for i in index.tolist()]))
    torch.testing.assert_close(batch["label"], torch.stack([ds[i]["label"] for i in index.tolist()]))


def _save_png(path: Path, color: tuple[int, int, int], size=(20, 20)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _make_folder(root: Path) -> None:
    _save_png(root / "cats" / "c1.png", (255, 0, 0))
    _save_png(root / "cats" / "c2.png", (0, 255, 0))
    (root / "cats" / "c2.txt").write_text("a green cat\n")
    _save_png(root / "dogs" / "deep" / "d1.png", (0, 0, 255))
    (root / "dogs" / "broken.png").write_bytes(b"this is not a png at all")
    (root / "dogs" / "notes.md").write_text("ignored: not an image")


def test_image_folder_skips_corrupt_and_warns_once(tmp_path):
    _make_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(str(tmp_path), image_size=8, channels=3)
    skipped = [w for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 1
    assert "skipped 1 " in str(skipped[0].message) and "broken.png" in str(skipped[0].message)
    assert len(ds) == 3 and ds.images.shape == (3, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.captions == ["", "a green cat", ""]
    red = ds[0]["x"]
    torch.testing.assert_close(red[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert ds[1]["caption"] == "a green cat"


def test_image_folder_get_batch_matches_getitem(tmp_path):
    _make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolder(str(tmp_path), image_size=8, channels=1)
    index = torch.tensor([2, 0, 1])
    batch = ds.get_batch(index)
    items = [ds[i] for i in index.tolist()]
    assert batch["x"].shape == (3, 1, 8, 8)
    torch.testing.assert_close(batch["x"], torch.stack([it["x"] for it in items]))
    torch.testing.assert_close(batch["label"], torch.stack([it["label"] for it in items]))
    assert batch["caption"] == [it["caption"] for it in items]


def test_image_folder_center_crop_and_top_level_unlabelled(tmp_path):
    from PIL import Image

    wide = np.zeros((16, 32, 3), dtype=np.uint8)
    wide[:, 8:24] = 255  # white centre square, black side bands
    Image.fromarray(wide).save(tmp_path / "wide.png")
    ds = ImageFolder(str(tmp_path), image_size=16, channels=1)
    assert ds.num_classes == 0 and ds.class_names == [] and ds.captions is None
    assert (ds.images == 255).all()
    assert "caption" not in ds[0] and "caption" not in ds.get_batch(torch.tensor([0]))


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        ImageFolder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty"))):
        ImageFolder(str(tmp_path / "empty"))


def test_build_dataset_and_config(tmp_path):
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=8, channels=3)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    _save_png(tmp_path / "train" / "a" / "x.png", (10, 20, 30))
    _save_png(tmp_path / "test" / "a" / "y.png", (10, 20, 30))
    _save_png(tmp_path / "test" / "b" / "z.png", (10, 20, 30))
    assert len(build_dataset(cfg, "train")) == 1
    assert len(build_dataset(cfg, "test")) == 2
    with pytest.raises(ValueError, match="fmnist"):
        build_dataset(DataConfig(name="imagenet"))
