"""Hugging Face Hub references (``hf-hub:ORG/REPO[/FILE]``) for weights and adapter files.

Resolution is cache first: a file already in the local Hugging Face cache is used without any
network access, so offline machines work from a copied cache. A file that is not cached fails
within seconds when the Hub is unreachable or ``HF_HUB_OFFLINE`` is set, with a message that
says how to supply it. ``HF_HUB_CACHE`` is read at each call (not only at import).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from ..errors import ClipimoError

HUB_PREFIX = "hf-hub:"
ADAPTER_FILE = "adapter.safetensors"
PROBE_TIMEOUT_S = 3.0


def is_hub_ref(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def parse_hub_ref(spec: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO[/FILE]`` -> (``ORG/REPO``, ``FILE`` or None); FILE may contain folders."""
    parts = spec[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ClipimoError(f"'{spec}': expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/FILE")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def hub_cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def host_reachable(host: str, port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def unreachable_reason(host: str | None) -> str | None:
    """Why a download cannot be tried now (None when it can)."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    if not host or not host_reachable(host):
        return f"{host or 'the download host'} cannot be reached"
    return None


def hub_file(spec: str, default_files: Sequence[str], what: str) -> Path:
    """The local path of the file ``spec`` names (``default_files`` tried in order when it names none)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, filename = parse_hub_ref(spec)
    candidates = [filename] if filename else list(default_files)
    cache = hub_cache_dir()
    for name in candidates:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache)
        if isinstance(hit, str):
            return Path(hit)
    why = unreachable_reason(hub_host())
    if why:
        raise ClipimoError(
            f"{what} '{spec}' ({' or '.join(candidates)} in {repo}) is not in the local Hugging Face cache "
            f"({cache or 'default location'}) and {why}. Download it on a machine with network access "
            f"(huggingface-cli download {repo} {candidates[0]}) and copy the cache (HF_HUB_CACHE), "
            "or pass a local file instead"
        )
    errors = []
    for name in candidates:
        try:
            return Path(hf_hub_download(repo, name, cache_dir=cache))
        except Exception as err:  # the Hub client raises many types (missing repo/file, HTTP, auth)
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise ClipimoError(f"could not download {what} '{spec}': " + "; ".join(errors))


def hub_revision(path: Path) -> str | None:
    """The commit hash of a file inside a Hub cache snapshot (``.../snapshots/<hash>/FILE``)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def resolve_adapter(spec: str | os.PathLike) -> Path:
    """An adapter argument (local file or ``hf-hub:ORG/REPO[/FILE]``, FILE defaulting to adapter.safetensors)."""
    return hub_file(spec, [ADAPTER_FILE], "adapter") if is_hub_ref(spec) else Path(spec)
