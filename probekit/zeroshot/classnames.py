"""Class names and prompt templates a zero-shot head is built from.

ImageNet comes from open_clip's own metadata (the names and 80 templates the CLIP paper
used), CIFAR-10 from the CLIP paper's prompt list (openai/CLIP data/prompts.md), anything
else from a text file with one class name per line. Templates are kept as plain
``str.format`` strings with one ``{}`` so they can be hashed into cache keys and logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from probekit.errors import UserError

CIFAR10_CLASSNAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# The CLIP paper's 18 CIFAR-10 prompts (openai/CLIP, data/prompts.md).
CIFAR10_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

# Used for user class files without a template file: CLIP's single default prompt.
DEFAULT_TEMPLATES = ("a photo of a {}.",)

BUILTIN = ("imagenet", "cifar10")
# label_space attribute of the feature files each built-in class list belongs to
LABEL_SPACES = {"imagenet": "imagenet1k", "cifar10": "cifar10"}


@dataclass(frozen=True)
class ClassList:
    """Class names in label order, the templates to prompt them with, and where they came from."""

    names: tuple[str, ...]
    templates: tuple[str, ...]
    source: str                  # "imagenet", "cifar10" or the class file's path
    label_space: str | None      # label space of the built-in list; None for a user file

    def __len__(self) -> int:
        return len(self.names)


def imagenet_classnames() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def imagenet_templates() -> tuple[str, ...]:
    """open_clip's 80 OpenAI ImageNet templates, turned from lambdas into format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def read_lines(path: str | os.PathLike, what: str) -> tuple[str, ...]:
    """Non-empty, stripped lines of a UTF-8 text file; lines starting with '#' are comments."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} file {str(path)!r} not found; pass an existing text file with one entry per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file {str(path)!r} is not UTF-8 text ({e.reason}); save it as UTF-8") from None
    return tuple(s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#"))


def check_templates(templates: tuple[str, ...], source: str) -> tuple[str, ...]:
    """Every template must take the class name through exactly one ``{}``."""
    if not templates:
        raise UserError(f"template list {source} is empty; give at least one template such as 'a photo of a {{}}.'")
    for t in templates:
        try:
            filled = t.format("\0")
        except (IndexError, KeyError, ValueError) as e:
            raise UserError(f"template {t!r} in {source} is not a format string with one '{{}}' ({e}); write e.g. 'a photo of a {{}}.'") from None
        if filled.count("\0") != 1:
            raise UserError(f"template {t!r} in {source} must contain exactly one '{{}}' where the class name goes")
    return templates


def load_classes(spec: str, templates: str | os.PathLike | None = None) -> ClassList:
    """Resolve ``--classes imagenet|cifar10|FILE`` and an optional ``--templates FILE``."""
    key = str(spec).strip().lower()
    if key == "imagenet":
        names, default_templates, label_space, source = imagenet_classnames(), imagenet_templates(), LABEL_SPACES[key], key
    elif key == "cifar10":
        names, default_templates, label_space, source = CIFAR10_CLASSNAMES, CIFAR10_TEMPLATES, LABEL_SPACES[key], key
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"--classes {spec!r} is neither a built-in list ({', '.join(BUILTIN)}) nor an existing file; "
                            f"pass one of those or a text file with one class name per line")
        names, default_templates, label_space, source = read_lines(path, "class-name"), DEFAULT_TEMPLATES, None, str(path)
    if not names:
        raise UserError(f"class list {source} is empty; put one class name per line, in label order")
    # Repeated names are allowed: OpenAI's ImageNet list itself names two labels 'missile'.
    if templates is not None:
        template_list = check_templates(read_lines(templates, "template"), str(templates))
    else:
        template_list = check_templates(tuple(default_templates), source)
    return ClassList(tuple(names), template_list, source, label_space)
