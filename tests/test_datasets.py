"""Dataset registry: bundled digits / MNIST-5k, file layouts on tiny fake trees, bad input."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from probekit.datasets import (
    BadImageError,
    ImageDataset,
    create_dataset,
    list_datasets,
    load_rgb,
    parse_dataset_split,
)
from probekit.datasets.bundled import digits_split_indices
from probekit.datasets.framing import ink_bbox
from probekit.errors import UserError

# ---------------------------------------------------------------- registry and names


def test_list_datasets_names_and_splits():
    ds = list_datasets()
    for name in ("digits", "mnist5k", "cifar10", "cifar10.1", "cifar10.1-v4", "imagenet", "imagenetv2",
                 "objectnet", "imagenet-r", "fashion-mnist"):
        assert name in ds
    assert ds["digits"] == ("train", "test")
    assert ds["imagenet"] == ("train", "val")


def test_parse_dataset_split():
    assert parse_dataset_split("cifar10:train") == ("cifar10", "train")
    assert parse_dataset_split("cifar10.1-v4:test") == ("cifar10.1-v4", "test")
    assert parse_dataset_split("folder:/data/pets:val") == ("folder:/data/pets", "val")
    for bad in ("cifar10", "cifar10:", ":train", "folder:/data/pets"):
        with pytest.raises(UserError, match="DATASET:SPLIT"):
            parse_dataset_split(bad)


def test_unknown_dataset_and_split_suggest(tmp_path):
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        create_dataset("cifar1O", "train", root=tmp_path)
    with pytest.raises(UserError, match="did you mean 'train'"):
        create_dataset("digits", "trian")
    with pytest.raises(UserError, match="split"):
        create_dataset("mnist5k", "train")


# ---------------------------------------------------------------- bundled digits and MNIST-5k


@pytest.fixture(scope="module")
def bundled():
    return {s: create_dataset("digits", s) for s in ("train", "test")} | {"mnist5k": create_dataset("mnist5k", "test")}


def test_digits_split_sizes_stratified_fixed_disjoint(bundled):
    train, test = bundled["train"], bundled["test"]
    assert (len(train), len(test)) == (1347, 450)
    tr, te = digits_split_indices("train"), digits_split_indices("test")
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 1797
    # Stratified: every class's share of the test split is within one example of 25 %.
    from sklearn.datasets import load_digits

    y = load_digits().target
    counts = np.bincount(y, minlength=10)
    assert np.all(np.abs(np.bincount(test.targets, minlength=10) - counts * 0.25) <= 1)
    assert np.array_equal(train.targets, y[tr]) and np.array_equal(test.targets, y[te])
    # Fixed: a fresh build (cache cleared) gives the same rows.
    from probekit.datasets import bundled as b

    b._digits_framed.cache_clear()
    assert np.array_equal(digits_split_indices("test"), te)
    assert create_dataset("digits", "test").describe() == test.describe()


def test_mnist5k_counts_and_images(bundled):
    m = bundled["mnist5k"]
    assert len(m) == 5000 and m.classes == [str(d) for d in range(10)]
    assert np.array_equal(np.bincount(m.targets), [500] * 10)
    img, label = m[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (28, 28)
    a = np.asarray(img)
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    assert label == int(m.targets[0])
    assert m.label_space == bundled["train"].label_space == "digits"


def test_digits_and_mnist_framed_alike(bundled):
    stats = {}
    for key in ("train", "mnist5k"):
        imgs = bundled[key].images
        assert imgs.dtype == np.uint8 and imgs.shape[1:] == (28, 28)
        assert imgs.max() == 255 and imgs.min() == 0
        boxes = np.array([ink_bbox(x) for x in imgs if ink_bbox(x) is not None])
        h, w = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        stats[key] = (np.maximum(h, w).mean(), cy.mean(), cx.mean(), (imgs > 0).mean())
        # Longer side of the ink is ~20 px, centred in the 28x28 canvas.
        assert np.all(np.maximum(h, w) >= 18) and np.all(np.maximum(h, w) <= 20)
        assert np.all(np.abs(cy - 13.5) <= 1) and np.all(np.abs(cx - 13.5) <= 1)
        # White ink on black: the border of the canvas is background.
        assert imgs[:, :3].max() == 0 and imgs[:, :, :3].max() == 0
    d, m = stats["train"], stats["mnist5k"]
    assert abs(d[0] - m[0]) < 1.0
    # Ink coverage is of the same order (raw optdigits would fill the whole frame).
    assert 0.5 < d[3] / m[3] < 2.0


def test_bundled_source_and_transform():
    ds = create_dataset("digits", "test", transform=lambda im: np.asarray(im).sum())
    x, _ = ds[0]
    assert isinstance(x, np.integer)
    assert ds.source(0) == f"sklearn load_digits() row {digits_split_indices('test')[0]}"
    with pytest.raises(IndexError):
        ds[len(ds)]


# ---------------------------------------------------------------- image files: conversion and bad files


def _write_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8), "RGB")
    out = {}
    out["rgb"] = folder / "a_rgb.png"
    rgb.save(out["rgb"])
    out["gray"] = folder / "b_gray.png"
    rgb.convert("L").save(out["gray"])
    out["cmyk"] = folder / "c_cmyk.jpg"
    rgb.convert("CMYK").save(out["cmyk"])
    rgba = np.zeros((12, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, but only the left half is opaque
    rgba[:, :5, 3] = 255
    out["rgba"] = folder / "d_rgba.png"
    Image.fromarray(rgba, "RGBA").save(out["rgba"])
    out["palette"] = folder / "e_pal.gif"
    rgb.convert("P").save(out["palette"])
    return out


def _truncate(path: Path, src: Image.Image, fmt: str) -> Path:
    src.save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_load_rgb_converts_every_mode(tmp_path):
    files = _write_images(tmp_path)
    for kind, path in files.items():
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (10, 12), kind
    gray = np.asarray(load_rgb(files["gray"]))
    assert np.array_equal(gray[..., 0], gray[..., 2])
    rgba = np.asarray(load_rgb(files["rgba"]))
    assert (rgba[:, :5] == [255, 0, 0]).all()  # opaque red stays red
    assert (rgba[:, 5:] == 255).all()  # transparent part composited on white


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_image_raises_bad_image_naming_file(tmp_path, fmt, suffix, monkeypatch):
    src = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    bad = _truncate(tmp_path / f"broken{suffix}", src, fmt)
    with pytest.raises(BadImageError, match="broken") as info:
        load_rgb(bad)
    assert info.value.path == str(bad) and isinstance(info.value, UserError)
    # Still refused when someone relaxed PIL globally, and the global is restored.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadImageError):
        load_rgb(bad)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_not_an_image_raises_bad_image(tmp_path):
    p = tmp_path / "fake.jpg"
    p.write_bytes(b"this is not a jpeg")
    with pytest.raises(BadImageError, match="fake.jpg") as info:
        load_rgb(p)
    # DataLoader workers send exceptions back pickled.
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, BadImageError) and again.path == str(p) and str(again) == str(info.value)


# ---------------------------------------------------------------- folder:PATH


def test_folder_dataset(tmp_path):
    tree = tmp_path / "pets"
    files = _write_images(tree / "train" / "cat")
    (tree / "train" / "dog" / "nested").mkdir(parents=True)
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tree / "train" / "dog" / "nested" / "x.JPG")
    (tree / "train" / "dog" / "notes.txt").write_text("not an image")
    (tree / "train" / ".hidden").mkdir()
    _truncate(tree / "train" / "dog" / "z_trunc.jpg", Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")

    ds = create_dataset(f"folder:{tree}", "train")
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == len(files) + 2 and list(ds.targets) == [0] * len(files) + [1, 1]
    # A folder's own files come before its subfolders' (sorted walk, as torchvision's ImageFolder).
    assert ds.source(len(ds) - 1).endswith("x.JPG")
    img, label = ds[len(ds) - 1]
    assert img.mode == "RGB" and label == 1
    with pytest.raises(BadImageError, match="z_trunc.jpg"):
        ds[len(files)]
    d = ds.describe()
    assert d["root"] == str((tree / "train").resolve()) and d["n"] == len(ds)
    assert d["fingerprint"]["files"] == len(ds) and d["fingerprint"]["bytes"] > 0
    json.dumps(d)
    # 'all' reads PATH itself: here its classes are the split folders.
    assert create_dataset(f"folder:{tree / 'train'}", "all").label_space == ds.label_space
    # '..' is resolved and reported, not escaped into silently.
    odd = create_dataset(f"folder:{tree / 'train' / 'cat' / '..'}", "all")
    assert odd.root == str((tree / "train").resolve())
    with pytest.raises(UserError, match="split"):
        create_dataset(f"folder:{tree}", "..")
    with pytest.raises(UserError, match="does not exist"):
        create_dataset(f"folder:{tmp_path / 'nope'}", "all")
    with pytest.raises(UserError, match="no class subfolders"):
        create_dataset(f"folder:{tree / 'train' / 'cat'}", "all")


# ---------------------------------------------------------------- CIFAR-10, CIFAR-10.1, Fashion-MNIST


def _fake_cifar(root: Path, n: int = 4) -> dict:
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        written[name] = (data, labels)
    return written


def test_cifar10_fake_batches(tmp_path):
    written = _fake_cifar(tmp_path)
    train = create_dataset("cifar10", "train", root=tmp_path)
    test = create_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (20, 4)
    assert list(train.targets[:4]) == written["data_batch_1"][1]
    data, _ = written["test_batch"]
    img, _ = test[1]
    # CHW planes in the pickle -> HWC image.
    assert np.array_equal(np.asarray(img), data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train.classes[0] == "airplane" and train.label_space == "cifar10"


def test_cifar10_missing_and_offline_download(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*cifar-10-python.tar.gz"):
        create_dataset("cifar10", "train", root=tmp_path)
    from probekit.datasets import download

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="offline"):
        create_dataset("cifar10", "test", root=tmp_path, download=True)
    assert not list((tmp_path / "cifar10").glob("*.part"))


def test_cifar10_1_versions(tmp_path):
    folder = tmp_path / "cifar10.1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for version, n in (("v6", 6), ("v4", 7)):
        np.save(folder / f"cifar10.1_{version}_data.npy", rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"cifar10.1_{version}_labels.npy", rng.integers(0, 10, n))
    v6 = create_dataset("cifar10.1", "test", root=tmp_path)
    v4 = create_dataset("cifar10.1-v4", "test", root=tmp_path)
    assert (len(v6), len(v4)) == (6, 7)
    assert v6.label_space == "cifar10" and v6[0][0].size == (32, 32)
    assert v6.describe()["fingerprint"]["sha1"] != v4.describe()["fingerprint"]["sha1"]
    (folder / "cifar10.1_v6_labels.npy").unlink()
    with pytest.raises(UserError, match=r"cifar10.1_v6_labels.npy.*github.com/modestyachts/CIFAR-10.1"):
        create_dataset("cifar10.1", "test", root=tmp_path)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape) + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def test_fashion_mnist_idx(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _write_idx(folder / "train-images-idx3-ubyte", imgs, gz=True)
    _write_idx(folder / "train-labels-idx1-ubyte", labels, gz=False)
    ds = create_dataset("fashion-mnist", "train", root=tmp_path)
    assert len(ds) == 5 and list(ds.targets) == [3, 1, 4, 1, 5]
    assert np.array_equal(np.asarray(ds[2][0])[..., 1], imgs[2])
    assert ds.classes[0] == "T-shirt/top" and ds.root == str(folder.resolve())
    # A header that promises more than the file holds is refused.
    bad = bytes([0, 0, 8, 1]) + struct.pack(">I", 9) + b"\x01\x02"
    (folder / "train-labels-idx1-ubyte").write_bytes(bad)
    from probekit.datasets import fashion_mnist

    with pytest.raises(UserError, match="IDX header"):
        fashion_mnist.read_idx(folder / "train-labels-idx1-ubyte")


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    from probekit.datasets import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(UserError, match=r"fashion-mnist.*dataset-fashion-mnist"):
        create_dataset("fashion-mnist", "test", root=tmp_path)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package(tmp_path):
    ds = create_dataset("fashion-mnist", "test", root=tmp_path)
    assert len(ds) == 10000 and np.array_equal(np.bincount(ds.targets), [1000] * 10)
    assert ds[0][0].size == (28, 28)


# ---------------------------------------------------------------- ImageNet family on tiny fake trees


def _png(path: Path, size=(9, 7), color=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagenet_wnid_folders(tmp_path):
    val = tmp_path / "imagenet" / "val"
    wnids = [f"n{10000000 + 7 * i:08d}" for i in range(1000)]
    for w in wnids:
        (val / w).mkdir(parents=True)
    _png(val / wnids[0] / "a.JPEG")
    _png(val / wnids[999] / "b.JPEG")
    ds = create_dataset("imagenet", "val", root=tmp_path)
    assert list(ds.targets) == [0, 999] and len(ds.classes) == 1000
    assert ds.classes[0].startswith("tench") and ds.label_space == "imagenet1k"
    (val / wnids[5]).rmdir()
    with pytest.raises(UserError, match="1000 wnid"):
        create_dataset("imagenet", "val", root=tmp_path)
    with pytest.raises(UserError, match=r"imagenet/train.*image-net.org"):
        create_dataset("imagenet", "train", root=tmp_path)


def test_imagenetv2_integer_folder_labels(tmp_path):
    tree = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for k in (2, 10, 100, 999):
        _png(tree / str(k) / f"{k}.jpeg")
    ds = create_dataset("imagenetv2", "test", root=tmp_path)
    # String sort would order 10, 100, 2, 999; the label is the folder's integer.
    assert list(ds.targets) == [2, 10, 100, 999]
    assert all(Path(ds.source(i)).parent.name == str(t) for i, t in enumerate(ds.targets))
    assert ds.label_space == "imagenet1k" and len(ds.classes) == 1000
    (tree / "n01440764").mkdir()
    with pytest.raises(UserError, match="class index"):
        create_dataset("imagenetv2", "test", root=tmp_path)


def test_objectnet_mapping_and_border_crop(tmp_path):
    folder_to_label = json.loads((Path(__file__).parents[1] / "probekit/data/testbeds/class_maps/"
                                  "folder_to_objectnet_label.json").read_text())
    tree = tmp_path / "objectnet" / "objectnet-1.0" / "images"
    # banana and alarm_clock map to ImageNet; squeegee does not and must be dropped.
    folders = {"banana": "Banana", "alarm_clock": "Alarm clock", "squeegee": "Squeegee"}
    for f, label in folders.items():
        assert folder_to_label[f] == label
        img = np.zeros((10, 12, 3), np.uint8)
        img[2:-2, 2:-2] = 200  # interior; the 2-px border is black
        _png(tree / f / "1.png")
        Image.fromarray(img).save(tree / f / "1.png")
    ds = create_dataset("objectnet", "test", root=tmp_path)
    assert len(ds.classes) == 113 and ds.classes == sorted(ds.classes) and ds.label_space == "objectnet113"
    assert len(ds) == 2
    labels = [ds.classes[t] for t in ds.targets]
    assert labels == ["Alarm clock", "Banana"]  # folders sorted: alarm_clock, banana
    assert ds.imagenet_indices[ds.classes.index("Banana")] == [954]
    assert ds.imagenet_indices[ds.classes.index("Alarm clock")] == [409, 530]
    assert len({i for idx in ds.imagenet_indices for i in idx}) == 125
    img, _ = ds[0]
    assert img.size == (8, 6) and np.asarray(img).min() == 200
    (tree / "not_a_class").mkdir()
    with pytest.raises(UserError, match="not ObjectNet classes"):
        create_dataset("objectnet", "test", root=tmp_path)
    with pytest.raises(UserError, match="objectnet.dev"):
        create_dataset("objectnet", "test", root=tmp_path / "elsewhere")


def test_imagenet_r_mapping(tmp_path):
    sub = json.loads((Path(__file__).parents[1] / "probekit/data/testbeds/class_maps/"
                      "imagenet_r_class_sublist.json").read_text())
    tree = tmp_path / "imagenet-r"
    wnids = sorted(f"n{20000000 + 13 * i:08d}" for i in range(200))
    for w in wnids:
        (tree / w).mkdir(parents=True)
    _png(tree / wnids[0] / "x.jpg")
    _png(tree / wnids[150] / "y.jpg")
    ds = create_dataset("imagenet-r", "test", root=tmp_path)
    assert list(ds.targets) == [0, 150] and ds.label_space == "imagenet-r200"
    assert ds.imagenet_indices == sub and ds.imagenet_indices[150] == sub[150]
    assert ds.classes[0].startswith("goldfish")  # ImageNet index 1
    (tree / wnids[3]).rmdir()
    with pytest.raises(UserError, match="200 wnid"):
        create_dataset("imagenet-r", "test", root=tmp_path)


def test_missing_roots_name_path_and_address(tmp_path):
    cases = {"imagenetv2": "huggingface.co", "imagenet-r": "berkeley.edu", "cifar10.1": "CIFAR-10.1"}
    for name, address in cases.items():
        with pytest.raises(UserError, match=address) as info:
            create_dataset(name, "test", root=tmp_path / "data")
        assert str(tmp_path / "data") in str(info.value)


def test_datasets_are_torch_datasets():
    import torch

    ds = create_dataset("digits", "test", transform=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1))
    assert isinstance(ds, ImageDataset) and isinstance(ds, torch.utils.data.Dataset)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 3, 28, 28) and y.dtype == torch.int64


def test_download_when_asked_fetches_and_unpacks(tmp_path, monkeypatch):
    """The real download path, with the network replaced by in-memory archives."""
    import io
    import tarfile

    src = tmp_path / "src"
    written = _fake_cifar(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    npy = {}
    for kind, arr in (("data", np.zeros((3, 32, 32, 3), np.uint8)), ("labels", np.array([1, 2, 3]))):
        b = io.BytesIO()
        np.save(b, arr)
        npy[f"cifar10.1_v6_{kind}.npy"] = b.getvalue()
    asked = []

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        body = buf.getvalue() if url.endswith("cifar-10-python.tar.gz") else npy[url.rsplit("/", 1)[1]]
        return io.BytesIO(body)

    from probekit.datasets import download

    monkeypatch.setattr(download.urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    ds = create_dataset("cifar10", "test", root=root, download=True)
    assert list(ds.targets) == written["test_batch"][1]
    assert not (root / "cifar10" / "cifar-10-python.tar.gz").exists()
    v6 = create_dataset("cifar10.1", "test", root=root, download=True)
    assert list(v6.targets) == [1, 2, 3]
    assert asked[0] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert asked[1] == "https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/cifar10.1_v6_data.npy"
    # Present on disk: no second download.
    create_dataset("cifar10", "test", root=root, download=True)
    assert len(asked) == 3
