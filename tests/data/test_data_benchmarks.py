"""Benchmark loaders on small fake trees in the CoOp layout, and ``clipimo datasets check``."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from conftest import put_image

from clipimo.cli.commands import datasets as datasets_cmd
from clipimo.data import IMAGENET_TEMPLATES, get_spec, load_dataset
from clipimo.data.benchmarks import packaged_split
from clipimo.data.check import check_dataset, check_datasets, format_report
from clipimo.errors import ClipimoError


def make_zhou(root: Path, name: str, per_split: dict[str, int], *, skip_image: str | None = None,
              classnames: list[str] | None = None) -> dict:
    """A dataset in the split_zhou layout with ``per_split[split]`` images per class."""
    spec = get_spec(name)
    base = root / spec.dirnames[0]
    image_dir = base / spec.image_dir if spec.image_dir else base
    names = classnames or [f"class_{c:03d}" for c in range(spec.num_classes)]
    split = {}
    for s, n in per_split.items():
        entries = []
        for label, cname in enumerate(names):
            for i in range(n):
                rel = f"{cname}/{s}_{i}.png"
                if rel != skip_image:
                    put_image(image_dir / rel)
                entries.append([rel, label, cname])
        split[s] = entries
    (base / spec.split_files[0]).write_text(json.dumps(split))
    return split


def make_paper_tree(root: Path, name: str) -> dict:
    """Empty files at every path of the paper's shipped split (existence is all the loader checks)."""
    spec = get_spec(name)
    split = json.loads(packaged_split(spec.split_files[0])[1])
    image_dir = root / spec.dirnames[0] / spec.image_dir
    rels = {entry[0] for entries in split.values() for entry in entries}
    for folder in {os.path.dirname(rel) for rel in rels}:
        (image_dir / folder).mkdir(parents=True, exist_ok=True)
    for rel in rels:
        open(image_dir / rel, "wb").close()
    return split


# the paper's splits, (folder, image folder, train / val / test, classes)
PAPER_SPLITS = {
    "CUB": ("cub", "images", (3605, 3503, 4680), 200),
    "StanfordDogs": ("stanford_dogs", "Images", (6122, 6122, 8336), 120),
    "PlantDoc": ("plantdoc", "all_images", (515, 515, 1546), 27),
}


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    """One fake tree (empty image files) for all three paper splits, made once: ~35k files."""
    root = tmp_path_factory.mktemp("paper")
    for name in PAPER_SPLITS:
        make_paper_tree(root, name)
    return root


def test_paper_splits_ship_with_the_package(paper_root):
    results = {r["dataset"]: r for r in check_datasets(paper_root, list(PAPER_SPLITS))}
    for name, (folder, images, counts, classes) in PAPER_SPLITS.items():
        assert not list((paper_root / folder).glob("*.json"))  # only images on disk: the split is shipped
        assert get_spec(name).image_dir == images
        result = results[name]  # loaded the split, checked every listed image exists
        assert result["status"] == "ok" and result["classes"] == classes
        assert result["counts"] == result["counts_expected"] == dict(zip(("train", "val", "test"), counts))


def test_paper_split_copy_in_the_folder_takes_precedence_and_missing_images_are_named(tmp_path):
    shipped = make_paper_tree(tmp_path, "PlantDoc")
    own = {s: entries[:30] if s == "train" else entries for s, entries in shipped.items()}
    (tmp_path / "plantdoc" / "split_alexey_plantdoc.json").write_text(json.dumps(own))
    mismatch = check_dataset("PlantDoc", tmp_path)
    assert mismatch["status"] == "count-mismatch" and "train 30 != 515" in mismatch["error"]
    (tmp_path / "plantdoc" / "split_alexey_plantdoc.json").unlink()
    gone = tmp_path / "plantdoc" / "all_images" / shipped["test"][0][0]
    gone.unlink()
    with pytest.raises(ClipimoError, match="split_alexey_plantdoc.json.gz: 1 listed image"):
        load_dataset("PlantDoc", tmp_path)


def make_aircraft(root: Path, n_classes: int = 100) -> None:
    base = root / "fgvc_aircraft"
    names = [f"A{c}-{c}00" for c in range(n_classes)]  # class names contain spaces in reality
    names[0] = "Boeing 737-200"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(names) + "\n")
    counter = 0
    for s in ("train", "val", "test"):
        lines = []
        for cname in names:
            image_id = f"{counter:07d}"
            counter += 1
            put_image(base / "images" / f"{image_id}.jpg")
            lines.append(f"{image_id} {cname}")
        (base / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")


WNIDS = [f"n{i:08d}" for i in range(1000)]


def make_imagenet(root: Path, train_per_class: int = 2) -> None:
    base = root / "imagenet"
    base.mkdir(parents=True)
    (base / "classnames.txt").write_text(
        "\n".join(f"{w} class {i}" for i, w in enumerate(WNIDS)) + "\n")
    for i, wnid in enumerate(WNIDS):
        for j in range(train_per_class):
            put_image(base / "images" / "train" / wnid / f"{wnid}_{j}.JPEG")
        put_image(base / "images" / "val" / wnid / f"ILSVRC2012_val_{i:08d}.JPEG")


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_root")
    make_imagenet(root)
    subset = WNIDS[::5]  # 200 classes, like -A / -R
    for wnid in subset:
        put_image(root / "imagenet-adversarial" / "imagenet-a" / wnid / "a.jpg")
    (root / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("ignored")
    for i in range(1000):
        put_image(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(i) / "x.jpeg")
    return root


def test_zhou_counts_classnames_and_templates(tmp_path):
    make_zhou(tmp_path, "OxfordPets", {"train": 3, "val": 1, "test": 2},
              classnames=[f"great_pyrenees_{c}" for c in range(37)])
    ds = load_dataset("oxford_pets", tmp_path)
    assert ds.name == "OxfordPets"
    assert ds.counts() == {"train": 111, "val": 37, "test": 74}
    assert ds.classnames[5] == "great_pyrenees_5"
    assert ds.templates == ["a photo of a {}, a type of pet."]
    assert ds.prompts("great_pyrenees") == ["a photo of a great pyrenees, a type of pet."]
    assert ds.root == str((tmp_path / "oxford_pets").resolve())
    first = ds.train[0]
    assert Path(first.path).is_file() and Path(first.path).is_absolute()
    assert ds.relpath(first) == "images/great_pyrenees_0/train_0.png"
    assert [it.label for it in ds.test[:3]] == [0, 0, 1]


def test_templates_match_spec():
    assert get_spec("ImageNet").templates == IMAGENET_TEMPLATES
    assert len(IMAGENET_TEMPLATES) == 7 and "a origami {}." in IMAGENET_TEMPLATES
    assert get_spec("dtd").templates == ("{} texture.",)
    assert get_spec("EuroSAT").templates == ("a centered satellite photo of {}.",)
    assert get_spec("Food101").templates == ("a photo of {}, a type of food.",)
    assert get_spec("UCF101").templates == ("a photo of a person doing {}.",)
    assert get_spec("CUB").templates == ("a photo of a {}, a type of bird.",)
    assert get_spec("ImageNetR").templates == IMAGENET_TEMPLATES
    with pytest.raises(ClipimoError, match="unknown dataset 'mnist'"):
        get_spec("mnist")


def test_food101_accepts_alternative_split_name(tmp_path):
    spec = get_spec("Food101")
    make_zhou(tmp_path, "Food101", {"train": 1, "val": 1, "test": 1})
    base = tmp_path / "food-101"
    (base / spec.split_files[0]).rename(base / "split_zhou_Food-101.json")
    assert load_dataset("Food101", tmp_path).counts() == {"train": 101, "val": 101, "test": 101}


def test_missing_split_file_names_it(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    with pytest.raises(ClipimoError, match=r"split_zhou_EuroSAT\.json not found"):
        load_dataset("EuroSAT", tmp_path)


def test_missing_dataset_folder_shows_layout(tmp_path):
    with pytest.raises(ClipimoError, match=r"(?s)no folder dtd.*split_zhou_DescribableTextures"):
        load_dataset("DescribableTextures", tmp_path)


def test_listed_but_absent_image_is_named(tmp_path):
    make_zhou(tmp_path, "EuroSAT", {"train": 2, "val": 1, "test": 1}, skip_image="class_003/val_0.png")
    with pytest.raises(ClipimoError, match=r"split_zhou_EuroSAT\.json: 1 listed image.*\n.*class_003/val_0\.png"):
        load_dataset("EuroSAT", tmp_path)
    assert load_dataset("EuroSAT", tmp_path, verify_files=False).counts()["val"] == 10


def test_class_count_mismatch(tmp_path):
    make_zhou(tmp_path, "EuroSAT", {"train": 1, "val": 1, "test": 1},
              classnames=[f"c{i}" for i in range(9)])
    with pytest.raises(ClipimoError, match="EuroSAT: found 9 classes .* expected 10"):
        load_dataset("EuroSAT", tmp_path)


def test_inconsistent_classname_in_split_file(tmp_path):
    split = make_zhou(tmp_path, "EuroSAT", {"train": 1, "val": 1, "test": 1})
    split["test"][0][2] = "Forest"
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(ClipimoError, match="label 0 is named both 'class_000' and 'Forest'"):
        load_dataset("EuroSAT", tmp_path)


def test_aircraft_txt_splits(tmp_path):
    make_aircraft(tmp_path)
    ds = load_dataset("FGVCAircraft", tmp_path)
    assert ds.counts() == {"train": 100, "val": 100, "test": 100}
    assert ds.classnames[0] == "Boeing 737-200"
    assert ds.train[0].label == 0 and ds.train[0].path.endswith("images/0000000.jpg")
    assert ds.prompts("Boeing 737-200") == ["a photo of a Boeing 737-200, a type of aircraft."]


def test_aircraft_unknown_variant(tmp_path):
    make_aircraft(tmp_path)
    path = tmp_path / "fgvc_aircraft" / "images_variant_test.txt"
    path.write_text(path.read_text() + "9999999 Concorde\n")
    with pytest.raises(ClipimoError, match=r"images_variant_test\.txt:101: class 'Concorde'"):
        load_dataset("FGVCAircraft", tmp_path)


def test_imagenet_folders_and_classnames(imagenet_root):
    ds = load_dataset("ImageNet", imagenet_root)
    assert ds.counts() == {"train": 2000, "val": 0, "test": 1000}
    assert ds.classnames[:2] == ["class 0", "class 1"]
    assert ds.train[2].label == 1 and ds.test[999].label == 999
    assert len(ds.prompts("class 0")) == 7
    assert ds.imagenet_classes is None


def test_imagenet_a_subset_maps_to_imagenet_order(imagenet_root):
    ds = load_dataset("imagenet-a", imagenet_root)  # classnames.txt taken from imagenet/
    assert ds.num_classes == 200 and ds.counts() == {"train": 0, "val": 0, "test": 200}
    assert ds.imagenet_classes[:3] == [0, 5, 10]
    assert ds.classnames[1] == "class 5"
    assert [it.label for it in ds.test[:2]] == [0, 1]


def test_imagenet_v2_index_folders(imagenet_root):
    ds = load_dataset("ImageNetV2", imagenet_root)
    assert ds.num_classes == 1000
    assert ds.imagenet_classes == list(range(1000))
    # labels follow the numeric folder names, not their string order ("10" < "2")
    assert all(Path(it.path).parent.name == str(it.label) for it in ds.test)


def test_imagenet_missing_class_folder(tmp_path):
    make_imagenet(tmp_path, train_per_class=1)
    (tmp_path / "imagenet" / "images" / "val" / WNIDS[3] / f"ILSVRC2012_val_{3:08d}.JPEG").unlink()
    (tmp_path / "imagenet" / "images" / "val" / WNIDS[3]).rmdir()
    with pytest.raises(ClipimoError, match=r"images/val: class folders do not match .*missing: \['n00000003'\]"):
        load_dataset("ImageNet", tmp_path)


def test_check_statuses(tmp_path):
    make_zhou(tmp_path, "EuroSAT", {"train": 1, "val": 1, "test": 1})
    make_paper_tree(tmp_path, "PlantDoc")
    (tmp_path / "dtd").mkdir()
    euro = check_dataset("EuroSAT", tmp_path)
    assert euro["status"] == "count-mismatch" and "train 10 != 13500" in euro["error"]
    assert check_dataset("PlantDoc", tmp_path)["status"] == "ok"
    dtd = check_dataset("dtd", tmp_path)
    assert dtd["status"] == "error" and "split_zhou_DescribableTextures.json not found" in dtd["error"]
    missing = check_dataset("UCF101", tmp_path)
    assert missing["status"] == "missing" and "UCF-101-midframes" in missing["layout"]
    report = format_report([euro, missing])
    assert "10/13500" in report and "ucf101/" in report


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    datasets_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_check(tmp_path, capsys):
    make_paper_tree(tmp_path, "PlantDoc")
    out = tmp_path / "check.json"
    args = _cli(["datasets", "check", "--root", str(tmp_path), "--json", str(out)])
    assert args.func(args) == 0  # missing datasets are fine when none were asked for
    text = capsys.readouterr().out
    assert "PlantDoc" in text and "missing" in text and "oxford_pets/" in text
    results = json.loads(out.read_text())
    assert {r["dataset"]: r["status"] for r in results}["PlantDoc"] == "ok"
    assert len(results) == 18

    args = _cli(["datasets", "check", "--root", str(tmp_path), "--dataset", "plantdoc,cub"])
    assert args.func(args) == 1  # CUB asked for but missing
    assert "cub/" in capsys.readouterr().out
