"""ImageNet and its natural distribution shifts: ImageNetV2, ObjectNet, ImageNet-R.

Layouts (under the data root):
  imagenet/{train,val}/<wnid>/*.JPEG          1000 wnid folders; sorted wnids -> indices 0..999
  imagenetv2/imagenetv2-matched-frequency-format-val/<k>/*.jpeg    k = ImageNet index 0..999
                                              (folder name is the label: a string sort puts "10" before "2")
  objectnet/objectnet-1.0/images/<folder>/*.png   (or objectnet/images/); 113 of the 313 classes map to
                                              ImageNet and are kept; labels index the sorted ObjectNet labels;
                                              the 2-px border is cropped on load, as the testbed does
  imagenet-r/<wnid>/*.jpg                     200 wnid folders; sorted folder i <-> ImageNet index
                                              imagenet_r_class_sublist.json[i]
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from probekit.datasets.base import FileDataset
from probekit.datasets.download import fetch_and_extract, missing
from probekit.datasets.folder import list_class_folders, list_images, scan
from probekit.datasets.registry import register_dataset
from probekit.errors import UserError

CLASS_MAPS = Path(__file__).resolve().parent.parent / "data" / "testbeds" / "class_maps"
WNID = re.compile(r"^n\d{8}$")
IMAGENET_URL = "https://image-net.org/download.php"
IMAGENETV2_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz"
IMAGENETV2_FOLDER = "imagenetv2-matched-frequency-format-val"
OBJECTNET_URL = "https://objectnet.dev/download.html"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
OBJECTNET_BORDER = 2


@lru_cache(maxsize=None)
def class_map(name: str):
    """One JSON file of `probekit/data/testbeds/class_maps/`."""
    with open(CLASS_MAPS / name, encoding="utf-8") as f:
        return json.load(f)


def imagenet_class_names() -> list[str]:
    names = class_map("imagenet_to_labels.json")
    return [names[str(i)] for i in range(1000)]


def objectnet_labels() -> list[str]:
    """The 113 ObjectNet labels that map to ImageNet, sorted: label k of the dataset is entry k."""
    return sorted(class_map("objectnet_label_to_imagenet_indices.json"))


def objectnet_imagenet_indices() -> list[list[int]]:
    """ImageNet indices of each of the 113 ObjectNet classes, in label order (125 distinct indices)."""
    mapping = class_map("objectnet_label_to_imagenet_indices.json")
    return [sorted(mapping[label]) for label in objectnet_labels()]


def imagenet_r_indices() -> list[int]:
    return list(class_map("imagenet_r_class_sublist.json"))


def _wnid_folders(tree: Path, expected: int, what: str, url: str) -> list[str]:
    folders = list_class_folders(tree)
    wnids = [f for f in folders if WNID.match(f)]
    if len(wnids) != expected or len(folders) != expected:
        flat = "" if folders else (" (images directly in the folder? sort them into one wnid folder per class)"
                                   if list_images(tree) else "")
        raise UserError(f"{what} at {tree} must have {expected} wnid class folders (n01440764, ...), found "
                        f"{len(wnids)} wnid folders among {len(folders)}{flat}; labels follow the sorted wnids, so "
                        f"a partial tree would mislabel images (get it from {url})")
    return wnids


@register_dataset("imagenet", ("train", "val"), label_space="imagenet1k")
def build_imagenet(split: str, *, root: Path, transform=None, download=False) -> FileDataset:
    tree = Path(root) / "imagenet" / split
    if not tree.is_dir():
        raise missing(f"ImageNet {split} folder", tree,
                      f"put ILSVRC-2012 {split} images there, one wnid folder per class "
                      f"(no public download; get it from {IMAGENET_URL})")
    wnids = _wnid_folders(tree, 1000, f"ImageNet {split}", IMAGENET_URL)
    paths, targets = scan(tree, wnids, list(range(1000)))
    ds = FileDataset(name="imagenet", split=split, paths=paths, targets=targets, classes=imagenet_class_names(),
                     label_space="imagenet1k", root=str(tree.resolve()), transform=transform)
    ds.wnids = wnids
    return ds


@register_dataset("imagenetv2", ("test",), label_space="imagenet1k")
def build_imagenetv2(split: str, *, root: Path, transform=None, download=False) -> FileDataset:
    base = Path(root) / "imagenetv2"
    tree = base / IMAGENETV2_FOLDER
    if not tree.is_dir() and download:
        fetch_and_extract(IMAGENETV2_URL, base, "imagenetv2-matched-frequency.tar.gz")
    if not tree.is_dir():
        raise missing("ImageNetV2 matched-frequency", tree, f"unpack imagenetv2-matched-frequency.tar.gz into {base}",
                      IMAGENETV2_URL)
    folders = list_class_folders(tree)
    bad = [f for f in folders if not (f.isdigit() and 0 <= int(f) < 1000)]
    if bad or not folders:
        raise UserError(f"ImageNetV2 at {tree} must hold folders named by ImageNet class index 0..999; "
                        f"found {len(bad)} other folder(s) such as {bad[:3]}" if bad else
                        f"ImageNetV2 at {tree} has no class folders; re-extract {IMAGENETV2_URL}")
    folders.sort(key=int)  # numeric order; the label is the folder's integer, not its sort position
    paths, targets = scan(tree, folders, [int(f) for f in folders])
    return FileDataset(name="imagenetv2", split=split, paths=paths, targets=targets, classes=imagenet_class_names(),
                       label_space="imagenet1k", root=str(tree.resolve()), transform=transform)


def _objectnet_tree(base: Path) -> Path | None:
    for candidate in (base / "objectnet-1.0" / "images", base / "images"):
        if candidate.is_dir():
            return candidate
    return None


@register_dataset("objectnet", ("test",), label_space="objectnet113")
def build_objectnet(split: str, *, root: Path, transform=None, download=False) -> FileDataset:
    """ObjectNet restricted to the 113 classes that map to ImageNet; 2-px border cropped on load."""
    base = Path(root) / "objectnet"
    tree = _objectnet_tree(base)
    if tree is None:
        raise missing("ObjectNet images folder", base / "objectnet-1.0" / "images",
                      f"unzip objectnet-1.0.zip into {base} (no open download: accept the licence at {OBJECTNET_URL})")
    folder_to_label = class_map("folder_to_objectnet_label.json")
    labels = objectnet_labels()
    label_index = {label: k for k, label in enumerate(labels)}
    folders = list_class_folders(tree)
    unknown = [f for f in folders if f not in folder_to_label]
    if unknown:
        raise UserError(f"ObjectNet at {tree}: {len(unknown)} folder(s) are not ObjectNet classes, e.g. {unknown[:3]}; "
                        f"point the data root at the unzipped objectnet-1.0")
    kept = [f for f in folders if folder_to_label[f] in label_index]
    if not kept:
        raise UserError(f"ObjectNet at {tree} has none of the 113 classes that map to ImageNet")
    paths, targets = scan(tree, kept, [label_index[folder_to_label[f]] for f in kept])
    ds = FileDataset(name="objectnet", split=split, paths=paths, targets=targets, classes=labels,
                     label_space="objectnet113", root=str(tree.resolve()), transform=transform,
                     crop_border=OBJECTNET_BORDER)
    ds.imagenet_indices = objectnet_imagenet_indices()
    return ds


@register_dataset("imagenet-r", ("test",), label_space="imagenet-r200")
def build_imagenet_r(split: str, *, root: Path, transform=None, download=False) -> FileDataset:
    tree = Path(root) / "imagenet-r"
    if not tree.is_dir() and download:
        fetch_and_extract(IMAGENET_R_URL, Path(root), "imagenet-r.tar")
    if not tree.is_dir():
        raise missing("ImageNet-R", tree, f"unpack imagenet-r.tar into {Path(root)}", IMAGENET_R_URL)
    wnids = _wnid_folders(tree, 200, "ImageNet-R", IMAGENET_R_URL)
    indices = imagenet_r_indices()
    names = imagenet_class_names()
    paths, targets = scan(tree, wnids, list(range(200)))
    ds = FileDataset(name="imagenet-r", split=split, paths=paths, targets=targets,
                     classes=[names[i] for i in indices], label_space="imagenet-r200", root=str(tree.resolve()),
                     transform=transform)
    ds.imagenet_indices = indices
    ds.wnids = wnids
    return ds
