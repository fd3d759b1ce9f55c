"""Issue 22, items 3 and 4: class folders and task layouts are what they look like."""
from __future__ import annotations

import logging
import os

import pytest
from conftest import put_image
from PIL import Image

from clipimo.data.custom import load_custom_dataset
from clipimo.data.generic import read_csv_list, read_image_folder
from clipimo.errors import ClipimoError


def test_numeric_folders_1_and_01_are_not_silently_one_class(tmp_path):
    put_image(tmp_path / "data" / "1" / "a.png")
    put_image(tmp_path / "data" / "01" / "b.png")
    with pytest.raises(ClipimoError, match="classes '01' and '1' are both class number 1; rename one"):
        read_image_folder(tmp_path / "data")
    for split, name in (("train", "01"), ("test", "1")):  # across the splits of a task too
        put_image(tmp_path / "task" / split / name / "a.png")
    with pytest.raises(ClipimoError, match="classes '01' and '1' are both class number 1"):
        load_custom_dataset(tmp_path / "task")
    (tmp_path / "list.csv").write_text("path,label\nx.png,1\ny.png,01\nz.png,0\n")
    with pytest.raises(ClipimoError, match="classes '01' and '1' are both class number 1"):
        read_csv_list(tmp_path / "list.csv", verify_files=False)


def test_hidden_files_and_folders_are_ignored_at_any_depth(tmp_path):
    cat = tmp_path / "data" / "cat"
    put_image(cat / "a.png")
    put_image(cat / ".ipynb_checkpoints" / "a-checkpoint.png")
    put_image(cat / "more" / ".hidden" / "b.png")
    put_image(cat / "more" / "c.png")
    (cat / ".DS_Store").write_bytes(b"\0\1")
    put_image(tmp_path / "data" / ".trash" / "x.png")
    items, names = read_image_folder(tmp_path / "data")
    assert names == ["cat"]
    assert [os.path.relpath(it.path, cat) for it in items] == ["a.png", os.path.join("more", "c.png")]


def test_every_pil_format_is_read_and_other_files_are_counted(tmp_path, caplog):
    cat = tmp_path / "data" / "cat"
    cat.mkdir(parents=True)
    for ext, fmt in ((".jfif", "JPEG"), (".ppm", "PPM"), (".tga", "TGA"), (".JPE", "JPEG"), (".png", "PNG")):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(cat / f"img{ext}", format=fmt)
    for name in ("notes.txt", "meta.json", "labels.txt", "README"):
        (cat / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="clipimo"):
        items, _ = read_image_folder(tmp_path / "data")
    assert sorted(os.path.basename(it.path) for it in items) == ["img.JPE", "img.jfif", "img.png", "img.ppm", "img.tga"]
    assert "skipped 4 file(s) that are not images PIL can read ((no extension): 1, .json: 1, .txt: 2)" in caplog.text


def test_a_split_given_as_folder_and_csv_is_an_error_naming_both(tmp_path):
    task = tmp_path / "task"
    for split in ("train", "test"):
        put_image(task / split / "cat" / "a.png")
    (task / "test.csv").write_text("path,label\ntest/cat/a.png,cat\n")
    with pytest.raises(ClipimoError, match=f"the test split is given twice, as the folder {task / 'test'} and "
                                           f"as the CSV {task / 'test.csv'}; keep one"):
        load_custom_dataset(task)


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    cat = tmp_path / "data" / "cat"
    put_image(cat / "a.png")
    bad = os.path.join(os.fsencode(cat), b"caf\xe9.png")
    with open(bad, "wb") as fh:
        fh.write((cat / "a.png").read_bytes())
    with pytest.raises(ClipimoError, match=r"file name b'.*caf\\xe9\.png' is not UTF-8 text; rename it"):
        read_image_folder(tmp_path / "data")
