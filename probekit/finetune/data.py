"""Training and evaluation data for full fine-tuning: transforms, seeded order, eval sets.

Reproducibility is by construction rather than by saved RNG streams: the order of epoch `e`
is a permutation drawn from ``(seed, epoch)``, and every sample's augmentation is drawn from
its own seed fixed by ``(seed, epoch, position)``. A run resumed mid-epoch therefore sees the
same batches with the same crops as an uninterrupted one, whatever the number of DataLoader
workers or processes.

Images leave the data pipeline as uint8 tensors; normalisation happens on the device
(`Normalize`), which quarters host-to-device traffic and lets eval sets be cached compactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probekit.datasets.images import to_rgb
from probekit.errors import UserError

# Eval sets whose decoded uint8 pixels fit this budget are held in memory after the first pass.
EVAL_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class TrainTransform:
    """PIL image -> augmented uint8 tensor [3, size, size] (picklable for workers)."""

    size: int
    augmentation: str        # "crop-flip" | "crop" | "resized-crop-flip" | "none"
    crop_padding: float = 0.125

    def __call__(self, image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F
        from torchvision.transforms import RandomCrop, RandomResizedCrop

        image = to_rgb(image)
        bilinear = InterpolationMode.BILINEAR
        if self.augmentation == "resized-crop-flip":
            i, j, h, w = RandomResizedCrop.get_params(image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            image = F.resized_crop(image, i, j, h, w, [self.size, self.size], interpolation=bilinear)
        else:
            image = F.resize(image, self.size, interpolation=bilinear)
            image = F.center_crop(image, [self.size, self.size])
            if self.augmentation in ("crop", "crop-flip"):
                pad = round(self.size * self.crop_padding)
                if pad:
                    image = F.pad(image, pad)
                i, j, h, w = RandomCrop.get_params(image, (self.size, self.size))
                image = F.crop(image, i, j, h, w)
        if self.augmentation.endswith("flip") and torch.rand(1).item() < 0.5:
            image = F.hflip(image)
        return F.pil_to_tensor(image)


@dataclass(frozen=True)
class ResizeCenterCrop:
    """PIL image -> uint8 tensor [3, size, size]: Resize(size * resize_ratio) + CenterCrop(size)."""

    size: int
    resize_ratio: float = 1.0

    def __call__(self, image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        image = to_rgb(image)
        image = F.resize(image, round(self.size * self.resize_ratio), interpolation=InterpolationMode.BILINEAR)
        image = F.center_crop(image, [self.size, self.size])
        return F.pil_to_tensor(image)


class Normalize(torch.nn.Module):
    """uint8 [B,3,H,W] on the device -> normalised float, optionally channels_last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1), persistent=False)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class RowView(torch.utils.data.Dataset):
    """Rows `rows` of a dataset, renumbered 0..len-1 (a training subset keeps the seeded data order logic)."""

    def __init__(self, dataset, rows: np.ndarray):
        self.dataset, self.rows = dataset, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.dataset[int(self.rows[i])]


class SeededSamples(torch.utils.data.Dataset):
    """Wraps an ImageDataset: item ``(index, sample_seed)`` seeds the augmentation RNG first."""

    def __init__(self, dataset, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        image, label = self.dataset[int(index)]
        torch.default_generator.manual_seed(int(sample_seed))  # CPU RNG only: 100x cheaper than torch.manual_seed
        return self.transform(image), label


def epoch_order(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The permutation of epoch `epoch` and one augmentation seed per position, from (seed, epoch) alone."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    return rng.permutation(n), rng.integers(0, 2**62, size=n, dtype=np.int64)


class StepBatches(torch.utils.data.Sampler):
    """Batches for optimiser steps ``start .. stop-1`` (global numbering across epochs).

    Every step takes the next `batch_size` positions of its epoch's permutation (the last
    incomplete batch of an epoch is dropped, so all steps see full batches). Under
    DistributedDataParallel rank r of w takes positions r, r+w, ... of the global batch,
    so the union over ranks is the single-process batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, *, rank: int = 0, world: int = 1):
        if batch_size > n:
            raise UserError(f"batch size {batch_size} exceeds the {n} training images; pass a smaller --batch-size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.steps_per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cached_epoch, order, seeds = -1, None, None
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                order, seeds = epoch_order(self.n, self.seed, epoch)
                cached_epoch = epoch
            lo = k * self.batch_size
            positions = range(lo + self.rank, lo + self.batch_size, self.world)
            yield [(int(order[p]), int(seeds[p])) for p in positions]


def check_dataset_labels(dataset, num_classes: int, what: str) -> None:
    """Refuse a dataset with a label outside ``0 .. num_classes-1``, naming the first offending item."""
    targets = np.asarray(dataset.targets)
    bad = np.flatnonzero((targets < 0) | (targets >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{what} {dataset.name}:{dataset.split} has label {int(targets[i])} at {dataset.source(i)} "
                        f"outside the head's {num_classes} classes; train and evaluate on the same label space")


class ImageEvalSet:
    """One evaluation set: a fixed (optionally class-balanced subset) list of items, cached as uint8.

    `rows` are dataset indices; under DDP each rank evaluates ``rows[rank::world]`` and the
    correct counts are summed, so the accuracy is over exactly `len(rows)` images.
    """

    def __init__(self, name: str, dataset, rows: np.ndarray, *, workers: int = 0, batch_size: int = 256):
        self.name, self.dataset, self.rows = name, dataset, np.asarray(rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(dataset.targets)[self.rows])
        self.workers, self.batch_size = workers, batch_size
        self._pixels: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.rows.size)

    def _loader(self, rows: np.ndarray):
        subset = torch.utils.data.Subset(self.dataset, rows.tolist())
        return torch.utils.data.DataLoader(subset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers)

    def batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 images and labels of this rank's share, from memory after the first full pass."""
        mine = np.arange(rank, self.n, world)
        if self._pixels is None:
            first = self.dataset[int(self.rows[0])][0] if self.n else torch.zeros(3, 1, 1, dtype=torch.uint8)
            if first.numel() * self.n <= EVAL_CACHE_BYTES:
                self._pixels = torch.cat([x for x, _ in self._loader(self.rows)]) if self.n else first[:0]
        if self._pixels is not None:
            for lo in range(0, mine.size, self.batch_size):
                sel = torch.as_tensor(mine[lo:lo + self.batch_size])
                yield self._pixels[sel], self.labels[sel]
            return
        for x, y in self._loader(self.rows[mine]):
            yield x, y


def eval_rows(dataset, per_class: int | None, seed: int = 0) -> np.ndarray:
    """All rows, or a fixed class-balanced subset of `per_class` images per class."""
    if not per_class:
        return np.arange(len(dataset))
    from probekit.datasets.subsets import select_subset

    return np.asarray(select_subset(np.asarray(dataset.targets), f"per-class={int(per_class)}", seed=seed))
