"""A Hub-ready folder for an adapter file, and its upload: the safetensors file plus a README model
card written from the adapter's own metadata (backbone identity, training method and data, config,
version)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ClipimoError
from ..utils import fileio
from ..utils.outputs import same_path
from ..version import __version__
from . import hub
from .adapter import read_adapter
from .hub import ADAPTER_FILE

CARD_FILE = "README.md"
CARD_MARKER = "<!-- written by clipimo adapter card -->"  # how a card folder is known as ours


def _rows(record: dict[str, Any]) -> list[str]:
    return [f"| `{k}` | `{json.dumps(v)}` |" for k, v in record.items()]


def card_text(meta: dict[str, Any], repo_id: str | None = None) -> str:
    """The model card (Markdown with YAML front matter) of an adapter file's metadata."""
    backbone = meta.get("backbone") or {}
    training = meta.get("training") or {}
    cfg = meta["config"]
    model, weights = backbone.get("model", "unknown"), backbone.get("weights", "unknown")
    random_init = bool(backbone.get("random_init") or training.get("random_init_backbone"))
    source = f"hf-hub:{repo_id}" if repo_id else "adapter.safetensors"
    pretrained = (weights[4:] if weights.startswith("tag:") else weights.split("@")[0] if hub.is_hub_ref(weights)
                  else "WEIGHTS_FILE")
    lines = [
        "---",
        "library_name: clipimo",
        "tags: [clip, open_clip, few-shot, imo-adapter]",
        "---",
        CARD_MARKER,
        "",
        f"# IMO adapter for {model} ({weights})",
        "",
    ]
    if random_init:
        lines += ["> **Trained on a RANDOM-INIT backbone: a test artefact, not a useful adapter.**", ""]
    lines += [
        "Intra-modal overlap (IMO) correction adapter made with [clipimo](https://pypi.org/project/clipimo/): "
        "a bottleneck MLP added in parallel to the MLP of every image-tower block, on the block's "
        "post-attention state. The original CLIP stream is unchanged; the corrected stream feeds "
        "training-free few-shot methods (Tip-Adapter, Tip-X, GDA and their -imo variants).",
        "",
        "## Backbone",
        "",
        "| field | value |",
        "|---|---|",
        *_rows(backbone),
        "",
        "## Adapter",
        "",
        "| field | value |",
        "|---|---|",
        *_rows(cfg),
        "",
        "## Training",
        "",
    ]
    if training:
        run_cfg = training.get("config") or {}
        lines += [
            f"- method: `{training.get('method', 'unknown')}`",
            f"- data: `{run_cfg.get('data', 'unknown')}` ({training.get('n_images', '?')} images"
            + (f", {training['n_classes']} classes" if "n_classes" in training else "") + ")",
            f"- steps: {training.get('steps', '?')}, epochs: {training.get('epochs', '?')}, "
            f"global batch: {training.get('global_batch', '?')}, processes: {training.get('world_size', '?')}",
            "",
            "<details><summary>full training configuration</summary>",
            "",
            "```json",
            json.dumps(run_cfg, indent=2, sort_keys=True),
            "```",
            "",
            "</details>",
            "",
        ]
    else:
        lines += ["No training record in the adapter file.", ""]
    lines += [
        "## Versions",
        "",
        f"- adapter format: `{meta.get('format')}` v{meta.get('version')}",
        f"- written by clipimo {meta.get('clipimo_version', 'unknown')}; card by clipimo {__version__}",
        "",
        "## How to load",
        "",
        "```bash",
        "pip install clipimo",
        f"clipimo features --model {model} --pretrained {pretrained} --adapter {source} --images DATA --out feats.npz",
        "```",
        "",
        "```python",
        "from clipimo import load_clip, load_adapters, adapters_enabled",
        f"bb = load_clip({model!r}, pretrained={pretrained!r})",
        f"load_adapters(bb.model, {source!r})",
        "with adapters_enabled(bb.model, True):  # False: the original CLIP stream",
        "    feats = bb.model.encode_image(images)",
        "```",
        "",
    ]
    return "\n".join(lines)


def is_card_folder(folder: Path) -> bool:
    """Whether ``folder``'s README.md is a card this command wrote (it carries :data:`CARD_MARKER`)."""
    readme = folder / CARD_FILE
    return readme.is_file() and CARD_MARKER in readme.read_text(encoding="utf-8", errors="replace")


def write_card(adapter: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None,
               force: bool = False) -> Path:
    """Write ``out/adapter.safetensors`` (a byte copy of the file read and validated once) and
    ``out/README.md``; returns ``out``. An existing README.md or adapter file that an earlier card did
    not write is replaced only with ``force``."""
    read = read_adapter(adapter)
    out = Path(out).expanduser()
    if not force and not is_card_folder(out):
        theirs = [name for name in (ADAPTER_FILE, CARD_FILE) if (out / name).exists()
                  and not (name == ADAPTER_FILE and same_path(out / name, read.path))]
        if theirs:
            raise ClipimoError(f"{out} already holds {' and '.join(theirs)}, not written by 'clipimo adapter card'; "
                               "pass --force to replace them, or choose another --out folder")
    fileio.write_bytes(out / ADAPTER_FILE, read.data)
    fileio.write_text(out / CARD_FILE, card_text(read.meta, repo_id))
    return out


def push_adapter(adapter: str | os.PathLike, repo_id: str, private: bool = False,
                 commit_message: str | None = None) -> str:
    """Upload the card folder of ``adapter`` to the Hub model repo ``repo_id`` (created if missing)
    with huggingface_hub's API; returns the commit URL. Credentials come from ``huggingface-cli login``
    or ``HF_TOKEN``."""
    import huggingface_hub

    hub.parse_hub_ref(hub.HUB_PREFIX + repo_id)
    why = hub.unreachable_reason(hub.hub_host())
    if why:
        raise ClipimoError(f"cannot push to {repo_id}: {why}")
    with tempfile.TemporaryDirectory(prefix="clipimo-card-") as tmp:
        folder = write_card(adapter, tmp, repo_id)
        api = huggingface_hub.HfApi()
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                     commit_message=commit_message or f"IMO adapter ({Path(str(adapter)).name})")
        except Exception as err:  # HTTP, auth and validation errors of the Hub client
            raise ClipimoError(f"uploading to {repo_id} failed: {type(err).__name__}: {err} "
                               "(log in with `huggingface-cli login` or set HF_TOKEN)") from err
    return str(getattr(info, "commit_url", info))
