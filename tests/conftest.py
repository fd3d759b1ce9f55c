"""Shared fixtures: a tiny random-init open_clip ViT and a few small generated images."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io

import numpy as np
import pytest
from PIL import Image

from clipimo.data.items import LabelledImage

TINY = "clipimo-tiny-vit"


@pytest.fixture()
def one_torch_thread():
    """Tiny tensors: one intra-op thread is as fast and does not collapse when the 2 shared cores
    are busy with other work (spinning OpenMP threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny():
    """A fresh tiny backbone for each test (tests modify the model in place)."""
    from clipimo import load_clip

    return load_clip(TINY)


def randomise_adapters(model, seed: int = 0, std: float = 0.2) -> None:
    """Seeded random adapter weights (zero-init Up would make the corrected stream equal the original)."""
    import torch

    from clipimo.model.adapter import iter_adapters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in iter_adapters(model):
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def make_images(folder, n: int, n_classes: int = 3, size: int = 40, seed: int = 0) -> list[LabelledImage]:
    """Small coloured noise images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        label = i % n_classes
        base = np.array([60 + 70 * label, 200 - 60 * label, 90 + 30 * (i % 2)])
        pixels = np.clip(base + rng.normal(0, 40, (size, size + 8, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        items.append(LabelledImage(str(path), label))
    return items


def make_task(root):
    """``root/task``: a 3-class custom task (train/val/test ImageFolder trees of 4/2/3 images per
    class) and ``root/adapter.safetensors``: a random non-zero adapter for the tiny model."""
    import torch

    from clipimo import add_adapters, load_clip, save_adapters

    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for label, name in enumerate(["red", "green", "blue"]):
            items = make_images(root / "raw" / split / name, 3 * n, seed=10 * label + len(split))
            (root / "task" / split / name).mkdir(parents=True, exist_ok=True)
            for i, it in enumerate(items):
                if it.label == label:
                    (root / "task" / split / name / f"{i}.png").write_bytes(open(it.path, "rb").read())
    bb = load_clip(TINY)
    add_adapters(bb.model)
    with torch.no_grad():
        for block in bb.model.visual.transformer.resblocks:
            block.adapter.up.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    save_adapters(bb.model, root / "adapter.safetensors")
    return root


@pytest.fixture()
def images(tmp_path):
    return make_images(tmp_path / "imgs", 10)


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


TINY_PNG = _tiny_png()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def put_image(path):
    """Write a tiny valid PNG at ``path`` (whatever its suffix) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TINY_PNG)
    return path


def assert_png(path, min_w=200, min_h=150):
    """A valid, non-blank PNG of at least the given size."""
    data = open(path, "rb").read()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_w and im.size[1] >= min_h
    import matplotlib.image

    arr = matplotlib.image.imread(path)
    assert arr.ndim == 3 and float(arr.std()) > 0  # not a blank canvas


def assert_figure(files, formats=("png",), dpi=200):
    """``{format: path}`` from a figure writer: exactly ``formats``, each a valid file of its kind;
    the PNG records ``dpi`` and has the pixel size that dpi implies for a figure at least 3 in wide."""
    assert set(files) == set(formats)
    for fmt, path in files.items():
        assert path.suffix == "." + fmt and path.is_file()
        data = path.read_bytes()
        if fmt == "png":
            assert_png(path, int(3 * dpi) - 2, int(2 * dpi))
            with Image.open(path) as im:
                assert tuple(round(v) for v in im.info["dpi"]) == (dpi, dpi)
        elif fmt == "pdf":
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 1000
            assert b"/FontFile2" in data  # TrueType fonts embedded (editable, accepted by journals)
        else:
            assert data.lstrip().startswith(b"<?xml") and b"<svg" in data and data.rstrip().endswith(b"</svg>")
            assert b"<text" in data  # text kept as text, not paths
