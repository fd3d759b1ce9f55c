import json
import time

import pytest
import torch
from conftest import TINY

from clipimo import load_clip
from clipimo.errors import ClipimoError
from clipimo.utils.log import RANDOM_INIT_WARNING


def test_random_init_is_flagged_and_reproducible(tiny):
    assert tiny.random_init
    assert tiny.identity["weights"].startswith("random-init")
    assert "meaningless" in RANDOM_INIT_WARNING
    again = load_clip(TINY, pretrained="none")
    for (k, a), (_, b) in zip(tiny.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert tiny.identity == again.identity
    assert tiny.image_size == 32
    assert callable(tiny.tokenizer) and tiny.preprocess is not None


def test_open_clips_own_random_init_warning_is_left_to_clipimos_banner(caplog):
    """open_clip logs "No pretrained weights loaded" on the root logger (past -q): clipimo drops
    that one record, not the rest of the root logger."""
    import logging

    with caplog.at_level(logging.WARNING):
        load_clip(TINY, pretrained="none")
        logging.getLogger().warning("another root warning")
    messages = [r.getMessage() for r in caplog.records]
    assert "another root warning" in messages
    assert not any(m.startswith("No pretrained weights loaded") for m in messages)


def test_unreachable_tag_fails_fast_with_advice():
    start = time.perf_counter()
    with pytest.raises(ClipimoError, match=r"not in the local cache.*--pretrained /path/to/weights"):
        load_clip("ViT-B-16", pretrained="openai")
    assert time.perf_counter() - start < 10


def test_unknown_tag_and_missing_file(tmp_path):
    with pytest.raises(ClipimoError, match="known tags"):
        load_clip(TINY, pretrained="no-such-tag")
    with pytest.raises(ClipimoError, match="does not exist"):
        load_clip(TINY, pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ClipimoError, match="unknown model"):
        load_clip("ViT-Q-99")


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ClipimoError, match="broken.pt"):
        load_clip(TINY, pretrained=str(bad))


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "torchscript"])
def test_local_checkpoint_formats(tmp_path, tiny, fmt):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tiny.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = tiny.model.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "state_dict":
        path = tmp_path / "w.pt"
        torch.save(sd, path)
    else:
        path = tmp_path / "w_jit.pt"
        torch.jit.script(tiny.model).save(str(path))  # a TorchScript archive, like OpenAI's releases
    loaded = load_clip(TINY, pretrained=str(path))
    assert not loaded.random_init
    assert loaded.identity["weights"].startswith("sha256:")
    assert loaded.identity["quick_gelu"] == (fmt == "torchscript")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(2, 3, 32, 32)
    if fmt != "torchscript":  # same weights and activation: same output
        assert torch.equal(loaded.model.encode_image(x), tiny.model.encode_image(x))


def test_model_config_json_path(tmp_path):
    from importlib import resources

    cfg = json.loads(resources.files("clipimo.model").joinpath("configs", f"{TINY}.json").read_text())
    cfg["vision_cfg"]["layers"] = 1
    path = tmp_path / "my-tiny.json"
    path.write_text(json.dumps(cfg))
    bb = load_clip(str(path))
    assert bb.name == "my-tiny"
    assert len(bb.model.visual.transformer.resblocks) == 1
