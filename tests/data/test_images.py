"""16-bit and float images are decoded with correct scaling, never clipped to near-white (issue 11)."""
import numpy as np
import pytest
from PIL import Image

from clipimo.data.images import load_rgb
from clipimo.errors import ClipimoError


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 16384], [32896, 50000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
    expected = np.array([[0, 1, 64], [128, 195, 255]], dtype=np.uint8)  # round(v * 255 / 65535) by hand
    assert rgb.shape == (2, 3, 3) and (rgb == expected[..., None]).all()


def test_float_tiff_in_unit_range_is_scaled_and_other_ranges_refused(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tiff")
    rgb = np.asarray(load_rgb(tmp_path / "unit.tiff"))
    assert (rgb[..., 1] == np.array([[0, 128], [64, 255]])).all()
    Image.fromarray(np.array([[0.0, 900.0]], dtype=np.float32)).save(tmp_path / "hdr.tiff")
    with pytest.raises(ClipimoError, match=r"hdr\.tiff: float image with pixel values in \[0, 900\]; expected \[0, 1\]"):
        load_rgb(tmp_path / "hdr.tiff")


def test_eight_bit_images_are_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    assert (np.asarray(load_rgb(tmp_path / "rgb.png")) == pixels).all()
