"""Issue 22, item 2: cached features follow an image's content and the adapter bytes actually loaded."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY, make_task
from PIL import Image

from clipimo import FeatureExtractor, load_clip
from clipimo.data.items import LabelledImage
from clipimo.model import adapter as adapter_module
from clipimo.model.adapter import adapter_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bmp(path, colour) -> None:
    """A BMP: every 24x24 RGB image has the same byte size, whatever its pixels."""
    Image.new("RGB", (24, 24), colour).save(path, format="BMP")


def test_cache_misses_a_replaced_image_whose_size_and_mtime_were_restored(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    items = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        _bmp(folder / f"{i}.bmp", colour)
        items.append(LabelledImage(str(folder / f"{i}.bmp"), i))
    extractor = FeatureExtractor(load_clip(TINY), cache_dir=tmp_path / "cache")
    before = extractor.image_features(items).original.clone()
    st = os.stat(items[0].path)
    _bmp(tmp_path / "new.bmp", (20, 20, 220))  # what `cp -p` / `rsync -a` would bring in
    shutil.copyfile(tmp_path / "new.bmp", items[0].path)
    os.utime(items[0].path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(items[0].path).st_size == st.st_size and os.stat(items[0].path).st_mtime_ns == st.st_mtime_ns
    after = extractor.image_features(items).original
    fresh = FeatureExtractor(load_clip(TINY), cache_dir=tmp_path / "fresh").image_features(items).original
    assert not torch.allclose(before[0], fresh[0])  # the new content has other features
    torch.testing.assert_close(after, fresh)  # and the cache returns them, not the old image's


def test_the_adapter_hash_is_of_the_bytes_loaded_even_if_the_file_is_replaced(tmp_path, monkeypatch):
    make_task(tmp_path)
    path = tmp_path / "adapter.safetensors"
    loaded_bytes = path.read_bytes()
    other = tmp_path / "other.safetensors"
    bb = load_clip(TINY)
    adapter_module.add_adapters(bb.model)
    with torch.no_grad():
        for p in adapter_module.iter_adapters(bb.model):
            p.up.weight.fill_(0.05)
    adapter_module.save_adapters(bb.model, other)
    real_add = adapter_module.add_adapters

    def add_then_replace(*args, **kwargs):  # another process swaps the file while it is being loaded
        real_add(*args, **kwargs)
        shutil.copyfile(other, path)

    monkeypatch.setattr(adapter_module, "add_adapters", add_then_replace)
    extractor = FeatureExtractor(load_clip(TINY), adapter=path, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == other.read_bytes()  # the swap happened
    assert extractor.adapter_hash == hashlib.sha256(loaded_bytes).hexdigest()
    from safetensors.torch import load

    expected = load(loaded_bytes)
    state = adapter_state(extractor.backbone.model)
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        np.testing.assert_array_equal(state[name].numpy(), tensor.numpy())


def test_a_weights_file_replaced_between_hash_and_load_is_an_error(tmp_path, monkeypatch):
    import open_clip
    from safetensors.torch import save_file

    from clipimo.errors import ClipimoError

    sd = load_clip(TINY).model.state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    data = path.read_bytes()
    real_create = open_clip.create_model_and_transforms

    def create_then_replace(*args, **kwargs):  # the load happens, then another process rewrites the file
        made = real_create(*args, **kwargs)
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        return made

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create_then_replace)
    with pytest.raises(ClipimoError, match=f"weights file {path} changed while it was being hashed and loaded"):
        load_clip(TINY, pretrained=str(path))
