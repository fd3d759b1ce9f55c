"""ImageFolder trees, ``path,label`` CSV lists and the Open Images subset builder."""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import put_image

from clipimo.cli.app import main as cli_main
from clipimo.cli.commands import datasets as datasets_cmd
from clipimo.data import build_open_images_subset, load_custom_dataset, read_csv_list, read_image_folder
from clipimo.data.openimages import read_class_descriptions, read_verified_labels
from clipimo.errors import ClipimoError


def test_image_folder(tmp_path):
    for name in ("b.png", "a.jpg", "nested/c.JPEG"):
        put_image(tmp_path / "zebra" / name)
    put_image(tmp_path / "ant" / "x.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    items, classnames = read_image_folder(tmp_path)
    assert classnames == ["ant", "zebra"]
    assert [(Path(p).relative_to(tmp_path).as_posix(), l) for p, l in items] == [
        ("ant/x.png", 0), ("zebra/a.jpg", 1), ("zebra/b.png", 1), ("zebra/nested/c.JPEG", 1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipimoError, match="empty: class folder holds no image files"):
        read_image_folder(tmp_path)


def test_csv_with_class_names_and_ints(tmp_path):
    put_image(tmp_path / "imgs" / "1.png")
    put_image(tmp_path / "imgs" / "2.png")
    absolute = put_image(tmp_path / "elsewhere" / "3.png")
    (tmp_path / "names.csv").write_text(
        f"path,label\nimgs/1.png,dog\nimgs/2.png,cat\n{absolute},dog\n")
    items, classnames = read_csv_list(tmp_path / "names.csv")
    assert classnames == ["cat", "dog"]
    assert items[0] == (str(tmp_path / "imgs" / "1.png"), 1)
    assert items[2] == (str(absolute), 1)

    (tmp_path / "ints.csv").write_text("path,label\nimgs/1.png,1\nimgs/2.png,0\n")
    items, classnames = read_csv_list(tmp_path / "ints.csv")
    assert [it.label for it in items] == [1, 0] and classnames == ["0", "1"]


def test_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(ClipimoError, match=r"bad\.csv: expected a header with columns 'path,label'"):
        read_csv_list(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("path,label\nmissing.png,a\n")
    with pytest.raises(ClipimoError, match=r"gone\.csv: 1 listed image\(s\) do not exist"):
        read_csv_list(tmp_path / "gone.csv")
    with pytest.raises(ClipimoError, match="CSV list not found"):
        read_csv_list(tmp_path / "nope.csv")


def make_open_images(tmp_path: Path) -> tuple[Path, Path, Path]:
    """6 classes; images 0..29; class k has images k..k+9 (overlapping), all verified except
    one row with Confidence 0, and image 29 has no file."""
    images = tmp_path / "oi" / "train"
    for i in range(29):
        put_image(images / f"img{i:02d}.jpg")
    descriptions = tmp_path / "oi" / "class-descriptions-boxable.csv"  # official: no header
    descriptions.write_text("".join(f"/m/{k:03d},Thing {k}\n" for k in range(6))
                            + "/m/dup,Thing 0\n")
    labels = tmp_path / "oi" / "train-annotations-human-imagelabels.csv"
    rows = ["ImageID,Source,LabelName,Confidence"]
    for k in range(6):
        rows += [f"img{i:02d},verification,/m/{k:03d},1" for i in range(3 * k, 3 * k + 10)]
    rows += [f"img{i:02d},verification,/m/dup,1" for i in range(10)]
    rows.append("img05,verification,/m/005,0")  # negative label: ignored
    labels.write_text("\n".join(rows) + "\n")
    return descriptions, labels, images


def test_open_images_subset(tmp_path):
    descriptions, labels, images = make_open_images(tmp_path)
    out = tmp_path / "lists" / "oi_subset.csv"
    summary = build_open_images_subset(descriptions, labels, images, out, n_classes=2,
                                       images_per_class=3, seed=7)
    assert summary["n_images"] == 6 and len(summary["classes"]) == 2
    items, classnames = read_csv_list(out)  # the trainers' reader accepts it
    assert len(classnames) == 2 and Counter(it.label for it in items) == {0: 3, 1: 3}
    assert len({it.path for it in items}) == 6  # no image reused across classes
    with open(out, newline="") as fh:
        first = next(iter(csv.DictReader(fh)))
    assert first["path"].startswith("../oi/train/img") and first["label"].startswith("Thing")
    again = tmp_path / "again.csv"
    build_open_images_subset(descriptions, labels, images, again, 2, 3, seed=7)
    assert again.read_text().replace("../oi", "oi") == out.read_text().replace("../oi", "oi")
    picks = {build_open_images_subset(descriptions, labels, images, tmp_path / f"s{s}.csv",
                                      2, 3, seed=s)["classes"][0]["label_name"] for s in range(8)}
    assert len(picks) > 1  # the seed matters


def test_open_images_metadata_readers(tmp_path):
    descriptions, labels, images = make_open_images(tmp_path)
    names = read_class_descriptions(descriptions)
    assert names["/m/000"] == "Thing 0" and len(names) == 7
    with_header = tmp_path / "with_header.csv"
    with_header.write_text("LabelName,DisplayName\n/m/x,X\n")
    assert read_class_descriptions(with_header) == {"/m/x": "X"}
    verified = read_verified_labels(labels, available={"img05", "img15", "img28"})
    assert verified["/m/005"] == ["img15"]  # img05 is a Confidence-0 row for /m/005
    assert "img28" not in sum(verified.values(), [])  # no positive label for it


def test_open_images_distinct_display_names(tmp_path):
    descriptions, labels, images = make_open_images(tmp_path)
    for seed in range(10):
        summary = build_open_images_subset(descriptions, labels, images, tmp_path / "s.csv",
                                           2, 3, seed=seed)
        shown = [c["display_name"] for c in summary["classes"]]
        assert len(set(shown)) == 2


def test_open_images_not_enough(tmp_path):
    descriptions, labels, images = make_open_images(tmp_path)
    # every class has 10 images, but 29 images are shared, so at most 2 disjoint classes fit
    with pytest.raises(ClipimoError, match=r"only \d Open Images classes have 10 unused positive images"):
        build_open_images_subset(descriptions, labels, images, tmp_path / "x.csv", 6, 10)
    assert not (tmp_path / "x.csv").exists()


def test_open_images_cli(tmp_path, capsys):
    descriptions, labels, images = make_open_images(tmp_path)
    parser = argparse.ArgumentParser()
    datasets_cmd.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "subset.csv"
    args = parser.parse_args([
        "datasets", "openimages", "--class-descriptions", str(descriptions), "--labels",
        str(labels), "--images", str(images), "--out", str(out), "--classes", "3",
        "--per-class", "2", "--seed", "1"])
    assert args.func(args) == 0
    assert '"n_images": 6' in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 7


def test_custom_dataset_folders_and_csv(tmp_path):
    for split, classes in (("train", ("cat", "dog", "eel")), ("test", ("dog", "cat"))):
        for cname in classes:
            put_image(tmp_path / "task" / split / cname / "0.png")
    ds = load_custom_dataset(tmp_path / "task")
    assert ds.name == "task" and ds.classnames == ["cat", "dog", "eel"]
    assert ds.counts() == {"train": 3, "val": 0, "test": 2}
    assert ds.test[1].label == 1 and ds.prompts("sea_lion") == ["a photo of a sea lion."]

    for i in range(11):
        put_image(tmp_path / "csvtask" / f"{i}.png")
    (tmp_path / "csvtask" / "train.csv").write_text("path,label\n" + "".join(f"{i}.png,{i}\n" for i in range(11)))
    (tmp_path / "csvtask" / "test.csv").write_text("path,label\n2.png,2\n")
    ds = load_custom_dataset(tmp_path / "csvtask", name="mine", templates=["{}"])
    assert ds.classnames[:3] == ["0", "1", "2"] and ds.classnames[-1] == "10"  # numeric order
    assert [it.label for it in ds.train][-2:] == [9, 10] and ds.test[0].label == 2
    with pytest.raises(ClipimoError, match=r"train: no train/ folder .* or train\.csv"):
        load_custom_dataset(tmp_path / "task" / "train")


# ---- issue 11: CSV encoding, repeated rows, label spaces ---------------------------------------

def test_csv_accepts_utf8_bom_and_names_the_line_of_a_decoding_error(tmp_path):
    put_image(tmp_path / "a.png")
    (tmp_path / "bom.csv").write_bytes("\ufeffpath,label\na.png,cat\n".encode("utf-8"))
    items, classnames = read_csv_list(tmp_path / "bom.csv")
    assert classnames == ["cat"] and items[0].path == str(tmp_path / "a.png")
    (tmp_path / "latin.csv").write_bytes("path,label\na.png,cat\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ClipimoError, match=r"latin\.csv, line 3: not UTF-8 text \(byte 0xe9\)"):
        read_csv_list(tmp_path / "latin.csv")


def test_csv_refuses_duplicate_rows_and_paths_with_two_labels(tmp_path):
    for name in ("a", "b", "c"):
        put_image(tmp_path / f"{name}.png")
    (tmp_path / "dup.csv").write_text("path,label\na.png,cat\nb.png,dog\n./a.png,cat\nc.png,cat\nc.png,dog\n")
    with pytest.raises(ClipimoError) as err:
        read_csv_list(tmp_path / "dup.csv")
    text = str(err.value)
    assert f"{tmp_path / 'c.png'} (lines 5, 6: labels cat, dog)" in text
    assert f"{tmp_path / 'a.png'} (lines 2, 4)" in text and "b.png" not in text


def test_csv_integer_labels_with_gaps_are_an_error_naming_the_empty_classes(tmp_path):
    for name in ("a", "b"):
        put_image(tmp_path / f"{name}.png")
    (tmp_path / "gaps.csv").write_text("path,label\na.png,0\nb.png,3\n")
    with pytest.raises(ClipimoError, match=r"gaps\.csv: integer labels 0\.\.3 have no rows for 1, 2"):
        read_csv_list(tmp_path / "gaps.csv")


def _task(root, train, test):
    for split, rows in (("train", train), ("test", test)):
        lines = ["path,label"]
        for i, label in enumerate(rows):
            put_image(root / "imgs" / f"{split}{i}.png")
            lines.append(f"imgs/{split}{i}.png,{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_custom_task_label_space_errors_name_the_classes(tmp_path):
    with pytest.raises(ClipimoError, match=r"test\.csv: class\(es\) zebra have no train images"):
        load_custom_dataset(_task(tmp_path / "absent", ["cat", "dog"], ["cat", "zebra"]))
    with pytest.raises(ClipimoError, match=r"labels mix integers and class names .*train\.csv: integers.*"
                                           r"test\.csv: class names, e\.g\. 'cat'"):
        load_custom_dataset(_task(tmp_path / "mixed", ["0", "1"], ["cat"]))
    with pytest.raises(ClipimoError, match=r"integer labels have no images for 1 in any split \(empty classes\)"):
        load_custom_dataset(_task(tmp_path / "gaps", ["0", "2"], ["2"]))
    ok = load_custom_dataset(_task(tmp_path / "ok", ["0", "1", "2"], ["02"]))  # test may lack classes
    assert ok.classnames == ["0", "1", "2"] and ok.test[0].label == 2


def test_paper_list_becomes_the_trainers_csv(tmp_path, capsys):
    """The paper's list format: ImageID, DisplayName, type; images flat or under <type>/."""
    images = tmp_path / "oi"
    for name in ("a1", "a2", "b1"):
        put_image(images / f"{name}.jpg")
    put_image(images / "validation" / "b2.jpg")
    listing = tmp_path / "paper_list.csv"
    listing.write_text("ImageID, DisplayName, type\na1, Apple, train\na2, Apple, train\nb1, Boat, train\n"
                       "b2, Boat, validation\ngone, Boat, train\n")
    main = lambda *extra: cli_main(["datasets", "openimages", "--list", str(listing), "--images", str(images),
                                    "--out", str(tmp_path / "lists" / "train.csv"), *extra])
    assert main() == 2
    err = capsys.readouterr().err
    assert "1 listed image(s) have no <ImageID>.jpg" in err and "gone" in err and "--skip-missing" in err
    assert not (tmp_path / "lists" / "train.csv").exists()
    assert main("--skip-missing", "--json", str(tmp_path / "summary.json")) == 0
    items, classnames = read_csv_list(tmp_path / "lists" / "train.csv")
    assert classnames == ["Apple", "Boat"] and [it.label for it in items] == [0, 0, 1, 1]
    assert [Path(it.path).name for it in items] == ["a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg"]
    assert Path(items[3].path).parent.name == "validation"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["missing_skipped"] == ["gone"] and summary["skip_missing"] is True and summary["n_images"] == 4
    assert main("--classes", "3") == 2 and "drop --classes" in capsys.readouterr().err
    listing.write_text("ImageID,Label\na1,Apple\n")
    assert main() == 2 and "expected columns ImageID, DisplayName, type" in capsys.readouterr().err
