"""The benchmark datasets: where each lives under a data root, and what it should contain."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClipimoError
from .templates import IMAGENET_TEMPLATES, SINGLE_TEMPLATES

ZHOU = "zhou"            # split_zhou_<Name>.json + an image folder
AIRCRAFT = "aircraft"    # official FGVC-Aircraft txt splits
IMAGENET = "imagenet"    # images/{train,val}/<wnid>/ + classnames.txt
SHIFT = "imagenet-shift"  # test-only ImageNet variants


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one benchmark; ``counts`` are the standard CoOp split sizes when known."""

    name: str
    dirnames: tuple[str, ...]          # accepted folder names under the data root, first = preferred
    num_classes: int
    templates: tuple[str, ...]
    kind: str
    image_dir: str = ""                # image folder inside the dataset folder
    split_files: tuple[str, ...] = ()  # accepted split file names (ZHOU), first = preferred
    packaged_split: bool = False       # ZHOU: split_files[0] ships gzipped in clipimo/data/paper_splits
    counts: dict[str, int] | None = None
    aliases: tuple[str, ...] = ()
    class_folders: str = "wnid"        # SHIFT: class sub-folders are "wnid"s or ImageNet "index"es
    subset: bool = False               # SHIFT: a subset of ImageNet's classes (-A, -R)

    @property
    def test_only(self) -> bool:
        return self.kind == SHIFT

    def find_dir(self, root: str | Path) -> Path | None:
        """The dataset folder under ``root``, or None when none of the accepted names exists."""
        for dirname in self.dirnames:
            candidate = Path(root) / dirname
            if candidate.is_dir():
                return candidate
        return None

    def layout(self, root: str | Path = "<root>") -> str:
        """The on-disk layout this loader expects, for error messages and ``datasets check``."""
        base = f"{root}/{self.dirnames[0]}"
        alt = f"   (also accepted: {', '.join(self.dirnames[1:])})" if len(self.dirnames) > 1 else ""
        if self.kind == ZHOU:
            image_dir = f"{base}/{self.image_dir}" if self.image_dir else base
            shipped = " (the paper's split, shipped with clipimo; a copy here takes precedence)" if self.packaged_split else ""
            return (
                f"{base}/{alt}\n"
                f"  {self.split_files[0]}  "
                '{"train"|"val"|"test": [[relpath, label, classname], ...]}'
                f"{shipped}\n"
                f"  images at {image_dir}/<relpath>"
            )
        if self.kind == AIRCRAFT:
            return (
                f"{base}/{alt}\n"
                f"  variants.txt                 one class name per line (label = line number)\n"
                f"  images_variant_train.txt     lines '<image id> <class name>'\n"
                f"  images_variant_val.txt\n"
                f"  images_variant_test.txt\n"
                f"  images/<image id>.jpg"
            )
        if self.kind == IMAGENET:
            return (
                f"{base}/{alt}\n"
                f"  classnames.txt               1000 lines '<wnid> <class name>' in ImageNet order\n"
                f"  images/train/<wnid>/<image>  (few-shot support and held-out validation)\n"
                f"  images/val/<wnid>/<image>    (test)"
            )
        folder = "<class index 0..999>" if self.class_folders == "index" else "<wnid>"
        return (
            f"{base}/{alt}\n"
            f"  {self.image_dir}/{folder}/<image>\n"
            f"  classnames.txt  '<wnid> <class name>' x 1000 "
            f"(or {root}/imagenet/classnames.txt)"
        )


def _zhou(name: str, dirname: str, image_dir: str, split_name: str, num_classes: int,
          counts: tuple[int, int, int] | None, *aliases: str,
          extra_dirs: tuple[str, ...] = (), extra_splits: tuple[str, ...] = ()) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        dirnames=(dirname, *extra_dirs),
        num_classes=num_classes,
        templates=(SINGLE_TEMPLATES[name],),
        kind=ZHOU,
        image_dir=image_dir,
        split_files=(f"split_zhou_{split_name}.json", *extra_splits),
        counts=dict(zip(("train", "val", "test"), counts)) if counts else None,
        aliases=aliases,
    )


def _paper(name: str, dirname: str, image_dir: str, split_name: str, num_classes: int,
           counts: tuple[int, int, int], *aliases: str) -> DatasetSpec:
    """A dataset evaluated on the paper's own split (``split_alexey_<name>.json``, shipped gzipped)."""
    return DatasetSpec(
        name=name, dirnames=(dirname,), num_classes=num_classes, templates=(SINGLE_TEMPLATES[name],),
        kind=ZHOU, image_dir=image_dir, split_files=(f"split_alexey_{split_name}.json",),
        counts=dict(zip(("train", "val", "test"), counts)), aliases=aliases, packaged_split=True,
    )


def _shift(name: str, dirname: str, image_dir: str, num_classes: int, test_count: int,
           class_folders: str, *aliases: str) -> DatasetSpec:
    return DatasetSpec(
        name=name, dirnames=(dirname,), num_classes=num_classes, templates=IMAGENET_TEMPLATES,
        kind=SHIFT, image_dir=image_dir, counts={"train": 0, "val": 0, "test": test_count},
        aliases=aliases, class_folders=class_folders, subset=num_classes < 1000,
    )


# Counts: the CoOp split sizes (train, val, test); for CUB, StanfordDogs and PlantDoc those of
# the paper's own splits.
_SPECS = (
    DatasetSpec(
        name="ImageNet", dirnames=("imagenet",), num_classes=1000, templates=IMAGENET_TEMPLATES,
        kind=IMAGENET, counts={"train": 1281167, "val": 0, "test": 50000}, aliases=("in1k",),
    ),
    _zhou("Caltech101", "caltech-101", "101_ObjectCategories", "Caltech101", 100,
          (4128, 1649, 2465), "caltech"),
    _zhou("OxfordPets", "oxford_pets", "images", "OxfordPets", 37, (2944, 736, 3669), "pets"),
    _zhou("StanfordCars", "stanford_cars", "", "StanfordCars", 196, (6509, 1635, 8041), "cars"),
    _zhou("OxfordFlowers", "oxford_flowers", "jpg", "OxfordFlowers", 102, (4093, 1633, 2463),
          "flowers", "flowers102"),
    _zhou("Food101", "food-101", "images", "Food101", 101, (50500, 20200, 30300), "food",
          extra_splits=("split_zhou_Food-101.json",)),
    DatasetSpec(
        name="FGVCAircraft", dirnames=("fgvc_aircraft",), num_classes=100,
        templates=(SINGLE_TEMPLATES["FGVCAircraft"],), kind=AIRCRAFT, image_dir="images",
        counts={"train": 3334, "val": 3333, "test": 3333}, aliases=("aircraft", "fgvc"),
    ),
    _zhou("SUN397", "sun397", "SUN397", "SUN397", 397, (15880, 3970, 19850), "sun"),
    _zhou("DescribableTextures", "dtd", "images", "DescribableTextures", 47, (2820, 1128, 1692),
          "dtd", "textures"),
    _zhou("EuroSAT", "eurosat", "2750", "EuroSAT", 10, (13500, 5400, 8100)),
    _zhou("UCF101", "ucf101", "UCF-101-midframes", "UCF101", 101, (7639, 1898, 3783), "ucf"),
    _paper("CUB", "cub", "images", "cub", 200, (3605, 3503, 4680), "cub200", "birds"),
    _paper("StanfordDogs", "stanford_dogs", "Images", "stanford_dogs", 120, (6122, 6122, 8336), "dogs"),
    _paper("PlantDoc", "plantdoc", "all_images", "plantdoc", 27, (515, 515, 1546)),
    _shift("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", 1000, 10000,
           "index", "imagenet-v2"),
    _shift("ImageNetSketch", "imagenet-sketch", "images", 1000, 50889, "wnid", "sketch"),
    _shift("ImageNetA", "imagenet-adversarial", "imagenet-a", 200, 7500, "wnid", "imagenet-a"),
    _shift("ImageNetR", "imagenet-rendition", "imagenet-r", 200, 30000, "wnid", "imagenet-r"),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
BENCHMARKS: tuple[str, ...] = tuple(s.name for s in _SPECS if not s.test_only)
SHIFT_SETS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.test_only)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_LOOKUP = {_key(alias): spec for spec in _SPECS for alias in (spec.name, *spec.aliases)}


def get_spec(name: str) -> DatasetSpec:
    """Look a dataset up by canonical name or alias (case, '-', '_' and spaces ignored)."""
    try:
        return _LOOKUP[_key(name)]
    except KeyError:
        close = difflib.get_close_matches(_key(name), _LOOKUP, n=3, cutoff=0.6)
        guess = list(dict.fromkeys(_LOOKUP[k].name for k in close))
        hint = f"did you mean {' or '.join(guess)}? " if guess else ""
        raise ClipimoError(
            f"unknown dataset {name!r} (not a benchmark name, nor an existing task folder); {hint}"
            f"known: {', '.join(DATASETS)}"
        ) from None
