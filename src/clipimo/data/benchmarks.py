"""Loading the benchmark datasets from the CoOp on-disk layout, without Dassl."""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from ..errors import ClipimoError
from .generic import is_image_file
from .items import LabelledImage
from .registry import AIRCRAFT, IMAGENET, SHIFT, ZHOU, DatasetSpec, get_spec
from .templates import format_prompts

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSplits:
    """One dataset's splits; labels index ``classnames``; ``root`` is the dataset's own folder.

    ``imagenet_classes`` (shift sets only) gives the ImageNet class index of each label, so
    1000-way logits restricted as ``logits[:, imagenet_classes]`` line up with the labels.
    """

    name: str
    root: str
    classnames: list[str]
    templates: list[str]
    train: list[LabelledImage]
    val: list[LabelledImage]
    test: list[LabelledImage]
    imagenet_classes: list[int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[LabelledImage]:
        if name not in SPLITS:
            raise ClipimoError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def prompts(self, classname: str) -> list[str]:
        """Every template of this dataset filled with ``classname`` ('_' -> space)."""
        return format_prompts(self.templates, classname)

    def relpath(self, item: LabelledImage) -> str:
        """Path of an item relative to the dataset folder, '/'-separated (for JSON indices)."""
        return Path(os.path.relpath(item.path, self.root)).as_posix()


def load_dataset(name: str, root: str | os.PathLike, verify_files: bool = True) -> DatasetSplits:
    """Load benchmark ``name`` from the data root ``root`` (the folder holding e.g. caltech-101/).

    With ``verify_files`` every image listed in a split file must exist; the error names the
    split file and the first missing images.
    """
    spec = get_spec(name)
    root = Path(root).expanduser()  # "~/data" from Python or a YAML file: no shell expanded it
    dataset_dir = spec.find_dir(root)
    if dataset_dir is None:
        raise ClipimoError(
            f"{spec.name}: no folder {' or '.join(spec.dirnames)} under {root}; expected layout:\n"
            + spec.layout(root)
        )
    dataset_dir = dataset_dir.resolve()
    readers = {ZHOU: _read_zhou, AIRCRAFT: _read_aircraft, IMAGENET: _read_imagenet,
               SHIFT: _read_shift}
    splits = readers[spec.kind](spec, dataset_dir, Path(root).resolve(), verify_files)
    if splits.num_classes != spec.num_classes:
        raise ClipimoError(
            f"{spec.name}: found {splits.num_classes} classes in {dataset_dir}, "
            f"expected {spec.num_classes}"
        )
    return splits


def _build(spec: DatasetSpec, dataset_dir: Path, classnames: list[str],
           train: list[LabelledImage], val: list[LabelledImage], test: list[LabelledImage],
           imagenet_classes: list[int] | None = None) -> DatasetSplits:
    return DatasetSplits(
        name=spec.name, root=str(dataset_dir), classnames=classnames,
        templates=list(spec.templates), train=train, val=val, test=test,
        imagenet_classes=imagenet_classes,
    )


def _check_exist(items: Iterable[LabelledImage], source: Path) -> None:
    missing = [item.path for item in items if not os.path.isfile(item.path)]
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ClipimoError(
            f"{source}: {len(missing)} listed image(s) do not exist:\n  {shown}{more}"
        )


# ---- split_zhou_<Name>.json ---------------------------------------------------------------

def packaged_split(filename: str) -> tuple[Path, str]:
    """A split file shipped gzipped with clipimo (the paper's CUB/StanfordDogs/PlantDoc splits):
    its path and its JSON text."""
    resource = resources.files("clipimo.data").joinpath("paper_splits", f"{filename}.gz")
    with resources.as_file(resource) as path:
        return Path(path), gzip.decompress(path.read_bytes()).decode("utf-8")


def _read_zhou(spec: DatasetSpec, dataset_dir: Path, root: Path, verify: bool) -> DatasetSplits:
    split_path = next((dataset_dir / f for f in spec.split_files if (dataset_dir / f).is_file()),
                      None)
    if split_path is not None:
        text = split_path.read_text(encoding="utf-8")
    elif spec.packaged_split:
        split_path, text = packaged_split(spec.split_files[0])
    else:
        raise ClipimoError(
            f"{spec.name}: split file {dataset_dir / spec.split_files[0]} not found; "
            f"expected layout:\n" + spec.layout(root)
        )
    image_dir = dataset_dir / spec.image_dir if spec.image_dir else dataset_dir
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ClipimoError(f"{split_path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or any(split not in data for split in SPLITS):
        raise ClipimoError(f"{split_path}: expected a JSON object with keys train, val, test")

    names: dict[int, str] = {}
    splits: dict[str, list[LabelledImage]] = {}
    image_root = str(image_dir)  # os.path.join: pathlib per item is slow for 10^4-10^5 images
    for split in SPLITS:
        items = []
        for entry in data[split]:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
                raise ClipimoError(
                    f"{split_path}: {split} entry {entry!r} is not [relpath, label, classname]"
                )
            relpath, label, classname = entry
            if names.setdefault(label, classname) != classname:
                raise ClipimoError(
                    f"{split_path}: label {label} is named both {names[label]!r} and {classname!r}"
                )
            items.append(LabelledImage(os.path.join(image_root, relpath), label))
        splits[split] = items
    classnames = _names_by_label(names, split_path)
    if verify:
        for split in SPLITS:
            _check_exist(splits[split], split_path)
    return _build(spec, dataset_dir, classnames, splits["train"], splits["val"], splits["test"])


def _names_by_label(names: dict[int, str], source: Path) -> list[str]:
    expected = set(range(len(names)))
    if set(names) != expected:
        gaps = sorted(expected - set(names))[:5] or sorted(set(names) - expected)[:5]
        raise ClipimoError(
            f"{source}: labels must be 0..{len(names) - 1} without gaps; offending: {gaps}"
        )
    return [names[label] for label in range(len(names))]


# ---- FGVC-Aircraft official txt splits ----------------------------------------------------

def _read_aircraft(spec: DatasetSpec, dataset_dir: Path, root: Path,
                   verify: bool) -> DatasetSplits:
    variants_path = dataset_dir / "variants.txt"
    if not variants_path.is_file():
        raise ClipimoError(
            f"{spec.name}: {variants_path} not found; expected layout:\n" + spec.layout(root)
        )
    classnames = [line.strip() for line in variants_path.read_text().splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(classnames)}
    splits: dict[str, list[LabelledImage]] = {}
    for split in SPLITS:
        path = dataset_dir / f"images_variant_{split}.txt"
        if not path.is_file():
            raise ClipimoError(
                f"{spec.name}: split file {path} not found; expected layout:\n" + spec.layout(root)
            )
        items = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise ClipimoError(
                    f"{path}:{lineno}: class {variant!r} is not listed in {variants_path}"
                )
            items.append(LabelledImage(str(dataset_dir / spec.image_dir / f"{image_id}.jpg"),
                                       label_of[variant]))
        if verify:
            _check_exist(items, path)
        splits[split] = items
    return _build(spec, dataset_dir, classnames, splits["train"], splits["val"], splits["test"])


# ---- ImageNet and its shift sets ----------------------------------------------------------

def read_imagenet_classnames(path: Path) -> dict[str, str]:
    """``classnames.txt`` as {wnid: class name}, in file (= ImageNet label) order."""
    if not path.is_file():
        raise ClipimoError(f"{path} not found: expected lines '<wnid> <class name>'")
    names: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, classname = line.strip().partition(" ")
        if not classname or wnid in names:
            raise ClipimoError(f"{path}:{lineno}: expected a new '<wnid> <class name>', got {line!r}")
        names[wnid] = classname.strip()
    return names


def _list_images(folder: Path) -> list[str]:
    return sorted(entry.path for entry in os.scandir(folder)
                  if entry.is_file() and is_image_file(entry.name))


def _class_dirs(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_dir() and not entry.name.startswith("."))


# ImageNet readers list image folders, so every item exists and ``verify`` has nothing to do.

def _read_imagenet(spec: DatasetSpec, dataset_dir: Path, root: Path,
                   verify: bool) -> DatasetSplits:
    names = read_imagenet_classnames(dataset_dir / "classnames.txt")
    label_of = {wnid: label for label, wnid in enumerate(names)}
    splits: dict[str, list[LabelledImage]] = {}
    for split, folder in (("train", "train"), ("test", "val")):
        split_dir = dataset_dir / "images" / folder
        if not split_dir.is_dir():
            raise ClipimoError(
                f"{spec.name}: {split_dir} not found; expected layout:\n" + spec.layout(root)
            )
        present = _class_dirs(split_dir)
        unknown = [wnid for wnid in present if wnid not in label_of]
        absent = sorted(set(names) - set(present))
        if unknown or absent:
            raise ClipimoError(
                f"{split_dir}: class folders do not match {dataset_dir / 'classnames.txt'} "
                f"(not listed: {unknown[:5]}, missing: {absent[:5]})"
            )
        splits[split] = [LabelledImage(path, label_of[wnid])
                         for wnid in present for path in _list_images(split_dir / wnid)]
    return _build(spec, dataset_dir, list(names.values()), splits["train"], [], splits["test"])


def _read_shift(spec: DatasetSpec, dataset_dir: Path, root: Path, verify: bool) -> DatasetSplits:
    own = dataset_dir / "classnames.txt"
    names = read_imagenet_classnames(own if own.is_file() else root / "imagenet" / "classnames.txt")
    wnids = list(names)
    image_dir = dataset_dir / spec.image_dir
    if not image_dir.is_dir():
        raise ClipimoError(
            f"{spec.name}: {image_dir} not found; expected layout:\n" + spec.layout(root)
        )
    folders = _class_dirs(image_dir)
    if spec.class_folders == "index":
        bad = [f for f in folders if not (f.isdigit() and int(f) < len(wnids))]
        if bad:
            raise ClipimoError(f"{image_dir}: class folders must be ImageNet indices 0..999, "
                               f"got {bad[:5]}")
        classes = sorted(int(f) for f in folders)
        folder_of = {index: str(index) for index in classes}
    else:
        index_of = {wnid: i for i, wnid in enumerate(wnids)}
        unknown = [f for f in folders if f not in index_of]
        if unknown:
            raise ClipimoError(f"{image_dir}: folders {unknown[:5]} are not ImageNet wnids")
        classes = sorted(index_of[f] for f in folders)
        folder_of = {index_of[f]: f for f in folders}
    if not spec.subset and classes != list(range(len(wnids))):
        raise ClipimoError(
            f"{image_dir}: found {len(classes)} class folders, expected all {len(wnids)}"
        )
    # Subsets (-A, -R) are defined by their own class folders, in ImageNet order.
    test = [LabelledImage(path, label) for label, index in enumerate(classes)
            for path in _list_images(image_dir / folder_of[index])]
    classnames = [names[wnids[index]] for index in classes]
    return _build(spec, dataset_dir, classnames, [], [], test, imagenet_classes=classes)
