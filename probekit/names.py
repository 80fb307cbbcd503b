"""The one parser of dataset names: ``DATASET:SPLIT`` and ``folder:PATH[:SPLIT]``.

Feature sets, run records and baselines all name data as ``dataset:split``; every module
that needs the dataset part or the split asks here, so ``folder:/a:test`` and
``folder:/b:test`` are two datasets everywhere (splitting at the first ``:`` made them one).
"""

from __future__ import annotations

from probekit.errors import UserError

FOLDER_PREFIX = "folder:"
_EXPECTED = "expected DATASET:SPLIT, e.g. 'cifar10:train', 'digits:test' or 'folder:/path/to/tree:all'"


def _split_folder(rest: str) -> tuple[str, str]:
    path, sep, split = rest.rpartition(":")
    if not sep or not path or not split or "/" in split or "\\" in split:
        return rest, ""
    return path, split


def parse_dataset_split(text: str, default_split: str | None = None) -> tuple[str, str]:
    """``"cifar10:train"`` -> ``("cifar10", "train")``; ``"folder:/data/pets:val"`` -> ``("folder:/data/pets", "val")``.

    Without a split: `default_split` when given (``folder:PATH`` then reads PATH itself,
    split ``all``), else a UserError."""
    text = str(text).strip()
    if text.startswith(FOLDER_PREFIX):
        path, split = _split_folder(text[len(FOLDER_PREFIX):])
        if path and split:
            return FOLDER_PREFIX + path, split
        if default_split is not None and path:
            return FOLDER_PREFIX + path, "all"
        raise UserError(f"missing split in {text!r}; {_EXPECTED}")
    name, sep, split = text.partition(":")
    if name and sep and split:
        return name, split
    if default_split is not None and name and not sep:
        return name, default_split
    raise UserError(f"missing split in {text!r}; {_EXPECTED}")


def dataset_name(text: str) -> str:
    """The dataset part of a set name: ``"imagenet-r:test"`` -> ``"imagenet-r"``, ``"folder:/a:test"`` -> ``"folder:/a"``.

    A name without a split is returned as it is."""
    text = str(text).strip()
    if text.startswith(FOLDER_PREFIX):
        return FOLDER_PREFIX + _split_folder(text[len(FOLDER_PREFIX):])[0]
    return text.split(":", 1)[0]
