"""``clipimo demo``: the whole pipeline on embedded real photographs, in minutes on a CPU.

The demo's data are crops of the real photographs that scikit-image ships.
Each photograph is one class; its images are random crops (position, scale, aspect, flip), so the
task is a small real-image few-shot problem that needs no download. The photographs of the
few-shot task and of the generic adapter-training pool are disjoint.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import load_custom_dataset
from ..data.images import load_rgb
from ..errors import ClipimoError
from ..features.extractor import FeatureExtractor
from ..methods.registry import METHODS
from ..model.backbone import load_clip
from ..overlap.stats import compare_streams
from ..report.builder import build_report
from ..report.figures import few_pairs_warning
from ..report.overlap_file import overlap_file_record, write_overlap
from ..report.style import FigureOptions
from ..train import make_config, train
from ..utils import fileio
from ..utils.log import logger, warn_random_init
from .grid import RunConfig, run_experiment

# class name -> file in skimage/data
TASK_PHOTOS = {
    "astronaut": "astronaut.png",
    "cat": "chelsea.png",
    "coffee_cup": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "galaxies": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "stained_tissue": "ihc.png",
    "brick_wall": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}
POOL_PHOTOS = {
    "cameraman": "camera.png",
    "cells": "cell.png",
    "clock": "clock_motion.png",
    "printed_page": "page.png",
    "text": "text.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "colour_wheel": "color.png",
    "stereo_motorcycle": "motorcycle_right.png",
}
TASK_SPLITS = {"train": 16, "val": 4, "test": 10}
POOL_PER_CLASS = 24
CROP_SIZE = 64
DEMO_RANDOM_MODEL = "clipimo-tiny-vit"


def skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as err:
        raise ClipimoError("the demo needs scikit-image for its sample photographs: pip install 'clipimo[demo]'") from err
    return Path(skimage.data.__file__).parent


def _random_crop(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = photo.size
    area = w * h * rng.uniform(0.15, 0.6)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(round(np.sqrt(area * aspect)))), min(h, int(round(np.sqrt(area / aspect))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = photo.crop((x, y, x + cw, y + ch)).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _write_png(path: Path, image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    fileio.write_bytes(path, buf.getvalue())


def build_demo_data(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``task/{train,val,test}/<class>/*.png`` and ``pool.csv`` (+ images) under ``out``.

    Deterministic in ``seed``; an existing complete build is reused.
    """
    out = Path(out).expanduser()
    done = out / "BUILD_COMPLETE"
    paths = {"task": out / "task", "pool": out / "pool.csv"}
    if done.is_file() and done.read_text().strip() == str(seed):
        return paths
    src = skimage_data_dir()
    rng = np.random.default_rng(seed)
    for name, file in TASK_PHOTOS.items():
        photo = load_rgb(src / file)
        for split, n in TASK_SPLITS.items():
            for i in range(n):
                _write_png(out / "task" / split / name / f"{i:02d}.png", _random_crop(photo, rng))
    rows = []
    for name, file in POOL_PHOTOS.items():
        photo = load_rgb(src / file)
        for i in range(POOL_PER_CLASS):
            rel = Path("pool") / name / f"{i:02d}.png"
            _write_png(out / rel, _random_crop(photo, rng))
            rows.append((rel.as_posix(), name))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    fileio.write_text(paths["pool"], buf.getvalue())
    fileio.write_text(done, f"{seed}\n")
    return paths


@dataclass
class DemoSettings:
    """Sizes of the demo; ``quick`` is the reduced mode CI runs."""

    shots: tuple[int, ...] = (1, 2, 4, 8)
    seeds: tuple[int, ...] = (1, 2, 3)
    augment_passes: int = 10
    train_epochs: int = 3

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(shots=(1, 4), seeds=(1,), augment_passes=2, train_epochs=1)


def run_demo(
    out: str | Path,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    settings: DemoSettings | None = None,
    workers: int = 0,
    progress: bool | None = None,
    figures: FigureOptions = FigureOptions(),
) -> Path:
    """Train an adapter on the pool, evaluate every method on the task, diagnose, report.

    Returns the path of ``report/report.md``. Without weights the backbone is a small random-init
    ViT and every output carries the random-init banner (figures: a corner mark and a caption line).
    """
    out = Path(out).expanduser()
    settings = settings or DemoSettings()
    pretrained = pretrained or os.environ.get("CLIPIMO_PRETRAINED") or None
    model = model or os.environ.get("CLIPIMO_MODEL") or ("ViT-B-16" if pretrained else DEMO_RANDOM_MODEL)

    logger.info(f"[1/5] demo data: crops of scikit-image's sample photographs -> {out / 'data'}")
    data = build_demo_data(out / "data")

    logger.info(f"[2/5] supervised IMO adapter training on the generic pool ({len(POOL_PHOTOS)} classes)")
    cfg = make_config(
        "supervised", data=str(data["pool"]), out=str(out / "train"), model=model, pretrained=pretrained,
        device=device, epochs=settings.train_epochs, batch_size=32, workers=workers, progress=progress,
        checkpoint_every=0,
    )
    adapter = train(cfg).export_path

    logger.info(f"[3/5] few-shot evaluation of every method on the task ({len(TASK_PHOTOS)} classes)")
    extractor = FeatureExtractor(
        load_clip(model, pretrained, device=device), adapter=adapter, cache_dir=out / "cache",
        num_workers=workers, progress=progress,
    )
    run_cfg = RunConfig(
        root=str(out / "data"), datasets=[str(data["task"])], shots=list(settings.shots), seeds=list(settings.seeds),
        methods=list(METHODS), augment_passes=settings.augment_passes,
    )
    results = run_experiment(run_cfg, extractor, out / "results", device=device, progress=progress,
                             save_features=True)

    logger.info("[4/5] intra-modal overlap of the task's test images, original vs corrected")
    test = load_custom_dataset(data["task"]).test
    feats = extractor.image_features(test, desc="task test")
    src = {
        "source": {"kind": "demo", "description": "demo task test split"},
        "backbone": extractor.backbone.identity,
        "adapter": {"path": str(adapter), "sha256": extractor.adapter_hash},
        "random_init": extractor.backbone.random_init,
        "original": feats.original.numpy(),
        "labels": feats.labels.numpy(),
    }
    labels = feats.labels.numpy()
    stats = compare_streams(feats.original.numpy(), feats.corrected.numpy(), labels)
    if warning := few_pairs_warning(stats):
        logger.warning(f"demo overlap: {warning}")
    overlap = overlap_file_record(src, stats, n_classes=len(TASK_PHOTOS))
    write_overlap(overlap, out / "overlap", options=figures)

    logger.info("[5/5] report")
    report = build_report(results, out / "report", overlaps=[(str(out / "overlap" / "overlap.json"), overlap)],
                          results_path=str(out / "results" / "results.json"), options=figures)
    if extractor.backbone.random_init:
        warn_random_init()
    print(f"report: {report}")
    return report
