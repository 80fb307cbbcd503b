"""Named training recipes: the paper's fine-tuning settings as presets, so a run names one word.

DESIGN.md gives the paper's full fine-tuning recipe for torchvision models: SGD, momentum 0.9,
weight decay 1e-4, batch 64; 100 epochs with lr in {0.01, 0.001, 0.0001} from pretrained weights,
250 epochs with lr in {0.1, 0.01} from random init; five seeds. Augmentation follows the data:
CIFAR-10 at 224 px with RandomCrop(224, padding=28) + flip, ImageNet RandomResizedCrop(224) + flip
and Resize(256) + CenterCrop(224) at test time. The paper names no learning-rate schedule, so the
presets keep the named lr constant (`schedule="constant"`); `--schedule cosine|step-50-75` is opt-in.

Digits (bundled ID set) use a small-resolution recipe without flips: handwritten digits are
not mirror-invariant (a flipped 2 is not a 2), so flipping would teach the wrong invariance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from probekit.errors import UserError, unknown_name

AUGMENTATIONS = ("crop-flip", "crop", "resized-crop-flip", "none")
SCHEDULES = ("constant", "cosine", "step-50-75")  # names say what they do; train-head heads have step-30-60-90


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one fine-tuning recipe; every field can be overridden on the CLI."""

    name: str
    epochs: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "constant"
    augmentation: str = "crop-flip"  # see `AUGMENTATIONS`
    image_size: int | None = None    # None: the model's own input size
    crop_padding: float = 0.125      # RandomCrop padding as a fraction of the size (28 / 224)
    test_resize: float = 1.0         # eval: Resize(size * test_resize) then CenterCrop(size)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("paper-pretrained", epochs=100, lrs=(0.01, 0.001, 0.0001), image_size=224,
               description="CIFAR-10 from pretrained weights: 224 px, RandomCrop(padding=28) + flip"),
        Recipe("paper-scratch", epochs=250, lrs=(0.1, 0.01), image_size=224,
               description="CIFAR-10 from random init: 224 px, RandomCrop(padding=28) + flip"),
        Recipe("imagenet-pretrained", epochs=100, lrs=(0.01, 0.001, 0.0001), image_size=224,
               augmentation="resized-crop-flip", test_resize=256 / 224,
               description="ImageNet from pretrained: RandomResizedCrop(224) + flip; test Resize(256) + CenterCrop(224)"),
        Recipe("imagenet-scratch", epochs=250, lrs=(0.1, 0.01), image_size=224,
               augmentation="resized-crop-flip", test_resize=256 / 224,
               description="ImageNet from random init: RandomResizedCrop(224) + flip; test Resize(256) + CenterCrop(224)"),
        Recipe("digits-pretrained", epochs=100, lrs=(0.01, 0.001, 0.0001), image_size=64, augmentation="crop",
               description="bundled digits from pretrained: 64 px, RandomCrop(padding=8), no flip (digits are not mirror-invariant)"),
        Recipe("digits-scratch", epochs=250, lrs=(0.1, 0.01), image_size=32, augmentation="crop",
               description="bundled digits from random init: 32 px, RandomCrop(padding=4), no flip"),
    )
}


def default_recipe(dataset: str, pretrained: bool) -> str:
    """The preset that fits a dataset and initialisation when the user names none."""
    kind = "pretrained" if pretrained else "scratch"
    if dataset in ("digits", "mnist5k", "fashion-mnist"):
        return f"digits-{kind}"
    if dataset in ("imagenet", "imagenetv2", "objectnet", "imagenet-r"):
        return f"imagenet-{kind}"
    return f"paper-{kind}"


def get_recipe(name: str, **overrides) -> Recipe:
    """The named preset with the given non-None fields replaced."""
    if name not in RECIPES:
        raise unknown_name("recipe", name, RECIPES)
    recipe = RECIPES[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "augmentation" in changes and changes["augmentation"] not in AUGMENTATIONS:
        raise unknown_name("augmentation", changes["augmentation"], AUGMENTATIONS)
    if "schedule" in changes and changes["schedule"] not in SCHEDULES:
        raise unknown_name("schedule", changes["schedule"], SCHEDULES)
    _check_numbers(changes)
    return replace(recipe, **changes)


def _check_numbers(changes: dict) -> None:
    """Learning rates must be positive and finite (lr 0 silently trains nothing; NaN breaks SGD)."""
    import math

    for lr in changes.get("lrs") or ():
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise UserError(f"--lr must be positive and finite, got {lr!r}; e.g. --lr 0.01")
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size")):
        if key in changes and changes[key] < 1:
            raise UserError(f"{flag} must be at least 1, got {changes[key]!r}")
    for key, flag in (("momentum", "--momentum"), ("weight_decay", "--weight-decay")):
        if key in changes and not (math.isfinite(changes[key]) and changes[key] >= 0):
            raise UserError(f"{flag} must be a finite number >= 0, got {changes[key]!r}")


def lr_at(step: int, base_lr: float, total_steps: int, schedule: str) -> float:
    """The learning rate of optimiser step `step` (0-based): a pure function, so resume needs no state."""
    if schedule == "constant" or total_steps <= 0:
        return base_lr
    frac = min(step / total_steps, 1.0)
    if schedule == "cosine":
        import math
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step-50-75":  # x0.1 at 50% and 75% of training
        return base_lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    raise unknown_name("schedule", schedule, SCHEDULES)
