"""The records a report is drawn from: ``results.json`` of ``clipimo run`` and ``shift.json`` of
``clipimo shift``, read and checked for the keys the report needs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import ClipimoError
from ..utils import fileio
from .aggregate import summarise


def validate_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Check the keys the report needs; fill ``summary`` from ``cells`` when it is absent."""
    if not isinstance(results, dict):
        raise ClipimoError(f"{source}: expected a JSON object with 'meta', 'cells' and 'summary'")
    for key in ("meta", "cells"):
        if key not in results:
            raise ClipimoError(f"{source}: missing key {key!r} (is this a results.json from 'clipimo run'?)")
    if not isinstance(results["cells"], list):
        raise ClipimoError(f"{source}: 'cells' must be a list")
    for i, cell in enumerate(results["cells"]):
        for key in ("dataset", "shots", "seed", "methods"):
            if key not in cell:
                raise ClipimoError(f"{source}: cells[{i}] lacks key {key!r}")
    summary = results.get("summary")
    if summary is None:
        summary = summarise(results["cells"])
    for i, row in enumerate(summary):
        for key in ("dataset", "shots", "method", "mean"):
            if key not in row:
                raise ClipimoError(f"{source}: summary[{i}] lacks key {key!r}")
    out = dict(results)
    out["summary"] = summary
    shift = results.get("shift")
    if shift is not None:
        if not isinstance(shift, dict) or not isinstance(shift.get("rows"), list):
            raise ClipimoError(f"{source}: 'shift' must be an object with a 'rows' list")
        for i, row in enumerate(shift["rows"]):
            for key in ("target", "method", "test_acc"):
                if key not in row:
                    raise ClipimoError(f"{source}: shift.rows[{i}] lacks key {key!r}")
    return out


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``results.json`` written by ``clipimo run`` (or its run folder)."""
    file = run_file(path)
    return validate_results(fileio.read_json(file, "results"), str(file))


def run_file(path: str | os.PathLike, name: str = "results.json") -> Path:
    """``name`` in a command's output folder, or the JSON file itself (read later, which names it if missing)."""
    path = Path(path)
    if path.suffix == ".json" and not path.is_dir():
        return path
    file = path / name
    if not file.is_file():
        raise ClipimoError(f"{path}: no {name} there (expected a clipimo output folder or its {name})")
    return file


def read_shift(path: str | os.PathLike) -> dict[str, Any]:
    """A shift.json written by ``clipimo shift`` (or its output folder)."""
    path = run_file(path, "shift.json")
    record = fileio.read_json(path, "shift")
    if not isinstance(record.get("rows"), list):
        raise ClipimoError(f"shift file {path}: expected a 'rows' list (written by 'clipimo shift')")
    return record


_MODEL_KEYS = ("model", "weights", "config_sha256", "quick_gelu")


def check_shift_matches(results: Mapping[str, Any], shift: Mapping[str, Any], shift_path: str) -> None:
    """A report puts a shift record next to the run's tables only when both come from one backbone,
    weights and adapter: otherwise the numbers describe different models."""
    meta = results.get("meta", {})
    ours, theirs = meta.get("backbone") or {}, shift.get("backbone") or {}
    differ = [k for k in _MODEL_KEYS if ours.get(k) != theirs.get(k) and (k in ours or k in theirs)]
    adapter = [(r.get("adapter") or {}).get("sha256") for r in (meta, shift)]
    if adapter[0] != adapter[1]:
        differ.append("adapter")
    if differ:
        def name(ident: Mapping[str, Any], sha: str | None) -> str:
            return f"{ident.get('model')} ({ident.get('weights')}), adapter {sha[:12] + '...' if sha else 'none'}"

        raise ClipimoError(f"--shift {shift_path} was made with {name(theirs, adapter[1])}, the results with "
                           f"{name(ours, adapter[0])} (differ in: {', '.join(differ)}); give the shift result of "
                           "the same model")


def is_random_init(meta: Mapping[str, Any]) -> bool:
    """Whether a results ``meta`` or an overlap record comes from a random-init backbone."""
    return bool(meta.get("random_init", (meta.get("backbone") or {}).get("random_init")))


def weights_name(meta: Mapping[str, Any]) -> str:
    """The weights of a run (or shift) record as people name them: a tag (``openai``), a weights file
    by its file name, a Hub file without its revision, or the random-init label. The hash that
    identifies the weights stays in ``backbone.weights`` (shown next to the name where it matters)."""
    weights = str((meta.get("backbone") or {}).get("weights", ""))
    if weights.startswith("tag:"):
        return weights[len("tag:"):]
    if weights.startswith("hf-hub:"):
        return weights.split("@", 1)[0]
    if weights.startswith("sha256:"):
        path = (meta.get("source") or {}).get("pretrained")
        return Path(path).name if path else f"weights file (sha256 {weights[len('sha256:'):][:12]}...)"
    return weights


def shown_path(path: str | os.PathLike, base: str | os.PathLike | None) -> str:
    """A path as a report shows it: relative to the report's folder ``base`` (so the report reads
    the same wherever the tree is moved), absolute without one."""
    absolute = os.path.abspath(path)
    if base is None:
        return absolute
    try:
        return Path(os.path.relpath(absolute, os.path.abspath(base))).as_posix()
    except ValueError:  # another drive (Windows)
        return absolute
