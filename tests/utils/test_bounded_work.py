"""Issue 22, item 6: small inputs never make clipimo's time or memory grow without bound."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from clipimo.cli.app import main
from clipimo.data.images import load_rgb
from clipimo.errors import ClipimoError
from clipimo.utils.fileio import read_yaml_mapping


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 600  # 9**9 (387 million) strings once expanded
    start = time.perf_counter()
    with pytest.raises(ClipimoError, match="expands to more than 100000 values"):
        read_yaml_mapping(path)
    assert time.perf_counter() - start < 5
    start = time.perf_counter()
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - start < 5


def test_overlap_bins_have_an_upper_bound_checked_before_any_work(tmp_path, capsys):
    missing = tmp_path / "not_read.npz"
    assert main(["overlap", "--features", str(missing), "--bins", "1000000000", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("clipimo overlap: error: --bins must be an integer from 1 to 10000 "
                                              "or 'auto', got '1000000000'")


def test_a_16_bit_png_is_decoded_without_float64_copies(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, size=(3000, 1000), dtype=np.uint16)
    pixels[0, :4] = [0, 128, 129, 65535]  # around the first rounding boundary, and the ends
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    tracemalloc.start()
    image = load_rgb(tmp_path / "deep.png")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rgb = np.asarray(image)
    expected = np.rint(pixels.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)  # by hand, in float64
    assert rgb.shape == (3000, 1000, 3) and (rgb == expected[..., None]).all()
    assert list(rgb[0, :4, 0]) == [0, 0, 1, 255]
    assert peak < 5 * pixels.size  # a float64 copy alone is 8 bytes per pixel


def test_augmented_passes_are_bounded(tmp_path, capsys):
    from conftest import TINY, put_image

    put_image(tmp_path / "imgs" / "cat" / "a.png")
    assert main(["run", "--dataset", "EuroSAT", "--augment-passes", "1000000", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().endswith("--augment-passes must be from 1 to 1000 (each keeps a view of "
                                                    "every support image), got 1000000")
    assert main(["features", "--images", str(tmp_path / "imgs"), "--passes", "1000000", "--model", TINY,
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "f.npz")]) == 2
    assert capsys.readouterr().err.strip().endswith("passes must be from 0 to 1000 (each keeps a view of every image), "
                                                    "got 1000000")
