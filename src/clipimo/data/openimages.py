"""Build the generic adapter-training set: N classes x M images picked from Open Images."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..errors import ClipimoError
from ..utils.fileio import write_text


def read_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """``LabelName,DisplayName`` rows as {label: display name}; the header line is optional
    (the official ``class-descriptions*.csv`` files have none)."""
    path = Path(path)
    if not path.is_file():
        raise ClipimoError(f"{path}: Open Images class descriptions not found "
                           "(expected rows 'LabelName,DisplayName', e.g. '/m/011k07,Tortoise')")
    names: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or row[0] == "LabelName":
                continue
            names[row[0]] = row[1]
    if not names:
        raise ClipimoError(f"{path}: no 'LabelName,DisplayName' rows")
    return names


def read_verified_labels(path: str | os.PathLike, available: set[str]) -> dict[str, list[str]]:
    """Image-level labels ``ImageID,Source,LabelName,Confidence`` as {label: sorted image ids},
    keeping positive labels (Confidence 1) of images in ``available``."""
    path = Path(path)
    if not path.is_file():
        raise ClipimoError(f"{path}: Open Images image-level labels not found "
                           "(expected header 'ImageID,Source,LabelName,Confidence')")
    by_label: dict[str, set[str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = {"ImageID", "LabelName", "Confidence"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise ClipimoError(f"{path}: expected columns ImageID,Source,LabelName,Confidence, "
                               f"got {reader.fieldnames}")
        for row in reader:
            if row["ImageID"] in available and float(row["Confidence"]) == 1.0:
                by_label.setdefault(row["LabelName"], set()).add(row["ImageID"])
    return {label: sorted(ids) for label, ids in by_label.items()}


def build_open_images_subset(
    class_descriptions: str | os.PathLike,
    image_labels: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    n_classes: int,
    images_per_class: int,
    seed: int = 0,
) -> dict:
    """Pick ``n_classes`` x ``images_per_class`` images and write ``path,label`` (label = display
    name, paths relative to the CSV's folder) atomically; return a JSON-able summary.

    Eligible classes have at least ``images_per_class`` positive images present as
    ``<image_dir>/<ImageID>.jpg``. Classes are visited in a seeded random order; an image taken
    by one class is never reused by another, and a class whose display name is already taken is
    skipped, so every CSV label is one Open Images class.
    """
    if n_classes < 1 or images_per_class < 1:
        raise ClipimoError("n_classes and images_per_class must be at least 1")
    image_dir = Path(image_dir).resolve()
    if not image_dir.is_dir():
        raise ClipimoError(f"{image_dir}: image folder not found (expected <ImageID>.jpg files)")
    available = {name[:-4] for name in os.listdir(image_dir) if name.endswith(".jpg")}
    names = read_class_descriptions(class_descriptions)
    by_label = read_verified_labels(image_labels, available)
    eligible = sorted(label for label, ids in by_label.items()
                      if label in names and len(ids) >= images_per_class)

    rng = np.random.default_rng(seed)
    used: set[str] = set()
    chosen: list[tuple[str, list[str]]] = []
    taken_names: set[str] = set()
    for index in rng.permutation(len(eligible)):
        label = eligible[index]
        free = [image_id for image_id in by_label[label] if image_id not in used]
        if len(free) < images_per_class or names[label] in taken_names:
            continue
        picks = sorted(free[i] for i in rng.choice(len(free), images_per_class, replace=False))
        used.update(picks)
        taken_names.add(names[label])
        chosen.append((label, picks))
        if len(chosen) == n_classes:
            break
    if len(chosen) < n_classes:
        raise ClipimoError(
            f"only {len(chosen)} Open Images classes have {images_per_class} unused positive "
            f"images in {image_dir} ({len(eligible)} eligible before de-duplication); "
            f"asked for {n_classes}"
        )

    out_csv = Path(out_csv).resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    chosen.sort(key=lambda pair: names[pair[0]])
    for label, picks in chosen:
        for image_id in picks:
            rel = os.path.relpath(image_dir / f"{image_id}.jpg", out_csv.parent)
            writer.writerow([Path(rel).as_posix(), names[label]])
    write_text(out_csv, buffer.getvalue())
    return {
        "csv": str(out_csv),
        "seed": seed,
        "n_classes": n_classes,
        "images_per_class": images_per_class,
        "n_images": n_classes * images_per_class,
        "eligible_classes": len(eligible),
        "classes": [{"label_name": label, "display_name": names[label]} for label, _ in chosen],
    }


PAPER_LIST_COLUMNS = ("ImageID", "DisplayName", "type")


def _image_file(image_dir: Path, image_id: str, kind: str) -> Path | None:
    """``<image_dir>/<ImageID>.jpg``, or ``<image_dir>/<type>/<ImageID>.jpg`` (images kept per
    Open Images split); None when neither exists."""
    candidates = [image_dir / f"{image_id}.jpg"] + ([image_dir / kind / f"{image_id}.jpg"] if kind else [])
    return next((c for c in candidates if c.is_file()), None)


def convert_paper_list(list_csv: str | os.PathLike, image_dir: str | os.PathLike, out_csv: str | os.PathLike,
                       skip_missing: bool = False) -> dict:
    """The paper's Open Images list (CSV with columns ``ImageID, DisplayName, type``) as the
    ``path,label`` CSV the trainers read (label = display name, paths relative to the CSV's folder).

    Every ImageID needs ``<image_dir>/<ImageID>.jpg`` (or ``<image_dir>/<type>/<ImageID>.jpg``);
    missing ones are listed in one error unless ``skip_missing``, which leaves them out and lists
    them in the returned summary.
    """
    list_csv, image_dir = Path(list_csv), Path(image_dir).resolve()
    if not list_csv.is_file():
        raise ClipimoError(f"{list_csv}: Open Images list not found (expected columns {', '.join(PAPER_LIST_COLUMNS)})")
    if not image_dir.is_dir():
        raise ClipimoError(f"{image_dir}: image folder not found (expected <ImageID>.jpg files)")
    with open(list_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        fields = [f.strip() for f in reader.fieldnames or []]
        if not set(PAPER_LIST_COLUMNS) <= set(fields):
            raise ClipimoError(f"{list_csv}: expected columns {', '.join(PAPER_LIST_COLUMNS)}, got {fields}")
        reader.fieldnames = fields
        rows = [(r["ImageID"].strip(), r["DisplayName"].strip(), (r["type"] or "").strip()) for r in reader]
    empty = [line for line, (image_id, name, _) in enumerate(rows, start=2) if not image_id or not name]
    if not rows or empty:
        raise ClipimoError(f"{list_csv}: " + (f"empty ImageID or DisplayName on line(s) {empty[:5]}" if rows
                                              else "no rows below the header"))
    out_csv = Path(out_csv).resolve()
    found, missing = [], []
    for image_id, name, kind in rows:
        path = _image_file(image_dir, image_id, kind)
        if path is None:
            missing.append(image_id)
        else:
            found.append((Path(os.path.relpath(path, out_csv.parent)).as_posix(), name))
    if missing and not skip_missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ClipimoError(f"{list_csv}: {len(missing)} listed image(s) have no <ImageID>.jpg in {image_dir}:\n"
                           f"  {shown}\n(pass --skip-missing to leave them out; the output records them)")
    if not found:
        raise ClipimoError(f"{list_csv}: none of the {len(rows)} listed images is in {image_dir}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows(found)
    write_text(out_csv, buffer.getvalue())
    return {
        "csv": str(out_csv),
        "source_list": str(list_csv.resolve()),
        "n_images": len(found),
        "n_classes": len({name for _, name in found}),
        "skip_missing": skip_missing,
        "missing_skipped": missing,
    }
