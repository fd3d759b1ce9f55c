"""hf-hub: references resolved from a local Hugging Face cache layout, model cards, and the upload call."""
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file

from clipimo import FeatureExtractor, add_adapters, load_adapters, load_clip, save_adapters
from clipimo.cli.app import main
from clipimo.errors import ClipimoError
from clipimo.model import hub
from clipimo.model.card import push_adapter, write_card

REV = "0123456789abcdef0123456789abcdef01234567"


def _put_in_cache(cache, repo, filename, src):
    """The Hub cache layout huggingface_hub reads: refs/main names the snapshot holding the file."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    dest = root / "snapshots" / REV / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


@pytest.fixture()
def adapter_file(tmp_path):
    bb = load_clip(TINY)
    add_adapters(bb.model, bottleneck=8)
    with torch.no_grad():
        for p in bb.model.visual.transformer.resblocks[0].adapter.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "trained.safetensors"
    training = {"method": "supervised", "config": {"data": "/data/pool.csv", "epochs": 3}, "steps": 42,
                "epochs": 3, "world_size": 1, "global_batch": 32, "n_images": 216, "n_classes": 9,
                "random_init_backbone": True}
    save_adapters(bb.model, path, extra={"training": training})
    return path


def test_adapter_from_the_local_hub_cache(cache, adapter_file):
    cached = _put_in_cache(cache, "org/imo", "adapter.safetensors", adapter_file)
    assert hub.resolve_adapter("hf-hub:org/imo") == cached
    assert hub.resolve_adapter("hf-hub:org/imo/adapter.safetensors") == cached
    extractor = FeatureExtractor(load_clip(TINY), adapter="hf-hub:org/imo", cache_dir=cache.parent / "c", progress=False)
    from clipimo.utils.fileio import sha256_file

    assert extractor.adapter_hash == sha256_file(adapter_file)
    direct = load_clip(TINY)
    load_adapters(direct.model, adapter_file)
    for a, b in zip(direct.model.visual.transformer.resblocks, extractor.backbone.model.visual.transformer.resblocks):
        assert all(torch.equal(p, q) for p, q in zip(a.adapter.parameters(), b.adapter.parameters()))


def test_pretrained_weights_from_the_local_hub_cache(cache, tmp_path):
    source = load_clip(TINY).model
    with torch.no_grad():
        source.visual.proj.mul_(3.0)  # differs from the seeded random init
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    _put_in_cache(cache, "org/tiny-clip", "open_clip_model.safetensors", weights)
    bb = load_clip(TINY, "hf-hub:org/tiny-clip")
    assert bb.identity["weights"] == f"hf-hub:org/tiny-clip/open_clip_model.safetensors@{REV}"
    assert not bb.random_init
    assert torch.equal(bb.model.visual.proj, source.visual.proj)


def test_uncached_reference_fails_fast_and_says_why(cache, monkeypatch):
    start = time.monotonic()
    with pytest.raises(ClipimoError, match="'hf-hub:org/missing'.*not in the local Hugging Face cache.*HF_HUB_OFFLINE is set"):
        hub.resolve_adapter("hf-hub:org/missing")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "host_reachable", lambda host, port=443: False)
    with pytest.raises(ClipimoError, match="open_clip_model.safetensors or open_clip_pytorch_model.bin.*cannot be reached"):
        load_clip(TINY, "hf-hub:org/missing")
    assert time.monotonic() - start < 10
    with pytest.raises(ClipimoError, match="expected hf-hub:ORG/REPO"):
        hub.resolve_adapter("hf-hub:just-a-name")
    with pytest.raises(ClipimoError, match="--pretrained hf-hub:timm/ViT-B-16-SigLIP"):
        load_clip("hf-hub:timm/ViT-B-16-SigLIP")


def test_card_folder_from_adapter_metadata(tmp_path, adapter_file, capsys):
    out = write_card(adapter_file, tmp_path / "card", repo_id="org/imo")
    assert (out / "adapter.safetensors").read_bytes() == adapter_file.read_bytes()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: clipimo\n")
    for needed in (f"IMO adapter for {TINY} (random-init(seed=0))", "RANDOM-INIT backbone", "method: `supervised`",
                   "data: `/data/pool.csv` (216 images, 9 classes)", "| `bottleneck` | `8` |",
                   "| `tower` | `\"open_clip-vit\"` |", "written by clipimo 0.1.0", "--adapter hf-hub:org/imo",
                   "load_adapters(bb.model, 'hf-hub:org/imo')"):
        assert needed in card, needed
    assert main(["adapter", "card", str(adapter_file), "--out", str(tmp_path / "cli")]) == 0
    assert "README.md" in capsys.readouterr().out
    assert (tmp_path / "cli" / "adapter.safetensors").read_bytes() == adapter_file.read_bytes()
    assert main(["adapter", "card", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


class _FakeApi:
    """The HfApi boundary: uploads land in a local folder standing in for the remote repo."""

    remote = None
    calls: list = []

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message))
        shutil.copytree(folder_path, self.remote / repo_id, dirs_exist_ok=True)
        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")


def test_push_uploads_the_card_folder(tmp_path, adapter_file, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "host_reachable", lambda host, port=443: True)
    _FakeApi.remote, _FakeApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    assert main(["adapter", "push", str(adapter_file), "org/imo", "--private"]) == 0
    assert "https://hub.example/org/imo/commit/1" in capsys.readouterr().out
    assert _FakeApi.calls[0] == ("create_repo", "org/imo", "model", True, True)
    assert _FakeApi.calls[1][:3] == ("upload_folder", "org/imo", "model")
    uploaded = tmp_path / "remote" / "org" / "imo"
    assert (uploaded / "adapter.safetensors").read_bytes() == adapter_file.read_bytes()
    assert "hf-hub:org/imo" in (uploaded / "README.md").read_text()

    def refuse(*a, **k):
        raise PermissionError("401 Unauthorized")

    monkeypatch.setattr(_FakeApi, "upload_folder", refuse)
    with pytest.raises(ClipimoError, match="uploading to org/imo failed: PermissionError: 401.*huggingface-cli login"):
        push_adapter(adapter_file, "org/imo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipimoError, match="cannot push to org/imo: HF_HUB_OFFLINE is set"):
        push_adapter(adapter_file, "org/imo")
