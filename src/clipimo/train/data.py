"""The training images and their order: which files, in which order, under which augmentation seed.

Data order and augmentation are functions of (seed, epoch, sample index) only: each epoch has one
seeded global permutation; global step s takes the next ``batch_size x world_size`` entries and
rank r takes every world_size-th of them from r; every sample's random augmentation is drawn
under its own seed. With restored model/optimizer/RNG state this makes a resumed CPU run end
bitwise where an uninterrupted one does, and a DDP step see the same images as one process with
the global batch.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..data.generic import is_image_file, read_csv_list, read_image_folder
from ..data.images import load_rgb
from ..data.items import LabelledImage
from ..data.transforms import seeded_transform
from ..errors import ClipimoError


def load_training_items(path: str | os.PathLike | None, need_labels: bool) -> tuple[list[LabelledImage], list[str]]:
    """A 'path,label' CSV or an ImageFolder tree; without ``need_labels`` also a flat image folder."""
    if not path:
        raise ClipimoError("no training images given: pass --data CSV_OR_FOLDER (or 'data:' in the config file)")
    source = Path(path)
    if source.is_dir():
        has_classes = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(source))
        if has_classes or need_labels:
            return read_image_folder(source)
        files = sorted(str(source.resolve() / n) for n in os.listdir(source) if is_image_file(n))
        if not files:
            raise ClipimoError(f"{source}: no image files")
        return [LabelledImage(f, 0) for f in files], ["unlabelled"]
    if source.is_file():
        return read_csv_list(source, verify_files=True)
    raise ClipimoError(f"--data {source}: no such CSV file or folder")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of one sample in one epoch (independent of rank and batch layout)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class ImageDataset(Dataset):
    """Items keyed by ``(index, sample_seed)``: the transform runs under that seed (torch RNG,
    forked so the caller's RNG stream is untouched)."""

    def __init__(self, items: Sequence[LabelledImage], transform: Callable):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        index, seed = key
        item = self.items[index]
        try:
            return seeded_transform(self.transform, load_rgb(item.path), seed), item.label
        except Exception as err:  # PIL raises many types, for damaged files also inside the transform
            raise ImageReadError(f"cannot read training image {item.path}: {err}") from err


class ImageReadError(ClipimoError):
    """A training image that cannot be read. Raised in a DataLoader worker, it reaches the main
    process rebuilt from the worker's traceback text; the constructor keeps only the message."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message[message.rfind(marker) + len(marker):].strip()
        super().__init__(message)


class EpochBatches:
    """Seeded per-epoch order, split into global steps and, within a step, across ranks."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False):
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.drop_last = seed, drop_last
        self.global_batch = batch_size * world_size
        if n == 0:
            raise ClipimoError("the training set is empty")
        if drop_last:
            self.steps_per_epoch = n // self.global_batch
            if self.steps_per_epoch == 0:
                raise ClipimoError(
                    f"{n} training images give no full global batch of {self.global_batch} "
                    f"({batch_size} x {world_size} processes); lower --batch-size or pass --no-drop-last"
                )
        else:
            self.steps_per_epoch = math.ceil(math.ceil(n / world_size) * world_size / self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([int(self.seed), int(epoch), 0x5EED]).permutation(self.n)
        if self.drop_last:
            return perm[: self.steps_per_epoch * self.global_batch]
        total = math.ceil(self.n / self.world_size) * self.world_size
        return np.concatenate([perm, perm[: total - self.n]])  # like DistributedSampler's padding

    def batches(self, epoch: int, start_step: int = 0) -> list[list[tuple[int, int]]]:
        """This rank's ``(index, sample_seed)`` keys for each step of ``epoch`` from ``start_step``."""
        order = self.order(epoch)
        out = []
        for step in range(start_step, self.steps_per_epoch):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch][self.rank::self.world_size]
            out.append([(int(i), sample_seed(self.seed, epoch, int(i))) for i in chunk])
        return out
