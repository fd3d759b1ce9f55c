"""Atomic file writes: a killed process never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        from ..errors import ClipimoError

        raise ClipimoError(f"{path} is a folder; expected the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as err:  # a full disk, a read-only folder, ...: name the file meant, not the temporary one
        from ..errors import ClipimoError

        raise ClipimoError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path when it is a file; otherwise a ClipimoError saying ``what`` was expected there
    (a folder and a missing path are told apart)."""
    from ..errors import ClipimoError

    path = Path(path)
    if path.is_dir():
        raise ClipimoError(f"{what} {path} is a folder; expected a file")
    if not path.is_file():
        raise ClipimoError(f"{what} {path} does not exist")
    return path


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """A UTF-8 text file (a leading byte-order mark dropped); anything else is a ClipimoError naming
    ``what``, the file and the line of the first byte that is not UTF-8."""
    from ..errors import ClipimoError

    path = require_file(path, what)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ClipimoError(f"{what} {path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); "
                           "save it as UTF-8") from None


def parse_json_object(text: str | bytes, where: str) -> dict:
    """A JSON object (mapping) from ``text``; anything else is a ClipimoError naming ``where``."""
    from ..errors import ClipimoError

    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClipimoError(f"{where} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ClipimoError(f"{where} must hold a JSON object, got {type(data).__name__}")
    return data


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from a file; a missing, malformed or non-object one is a ClipimoError naming
    ``what`` and the path."""
    path = require_file(path, f"{what} file")
    return parse_json_object(path.read_bytes(), f"{what} file {path}")


def file_stamp(path: str | os.PathLike) -> str:
    """What stands for a file's content in cache keys and fingerprints without reading it: size,
    mtime, ctime and inode (docs/files.md, "Feature cache"). ``cp -p``, ``rsync -a`` and ``tar x``
    restore size and mtime, but the kernel sets ctime whenever the content or metadata is written and
    a copy is a new inode, so a replaced image misses. "-1" for a missing file."""
    try:
        st = os.stat(path)
    except OSError:
        return "-1"
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


YAML_MAX_VALUES = 100_000  # a config holds tens of settings; aliases must not expand past this


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file that must hold a mapping (safe loader: plain data only). A key given twice
    is an error (YAML would keep the last silently), and so is a file whose aliases expand to more
    than :data:`YAML_MAX_VALUES` values (an "alias bomb" of a few hundred bytes)."""
    import yaml

    from ..errors import ClipimoError

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=True) for k, _ in node.value]
            for i, key in enumerate(keys):
                if key in keys[:i]:
                    line = node.value[i][0].start_mark.line + 1
                    raise ClipimoError(f"config file {path}, line {line}: key {key!r} is given twice")
            return super().construct_mapping(node, deep)

    text = read_text_file(path, "config file")
    try:
        data = yaml.load(text, Loader=StrictLoader) or {}
    except (yaml.YAMLError, TypeError) as err:  # TypeError: an unhashable key such as a list
        raise ClipimoError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ClipimoError(f"config file {path} must hold a mapping of setting: value, got {type(data).__name__}")
    if _count_values(data, YAML_MAX_VALUES) > YAML_MAX_VALUES:
        raise ClipimoError(f"config file {path} expands to more than {YAML_MAX_VALUES} values (nested YAML "
                           "aliases?); write the settings out plainly")
    return data


def _count_values(obj: Any, limit: int) -> int:
    """How many values ``obj`` holds once aliases are expanded, counting no further than past ``limit``
    (an iterative walk: the count stops early, whatever the nesting)."""
    count, stack = 0, [obj]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def write_safetensors(path: str | os.PathLike, tensors: dict, meta_key: str, meta: Any) -> None:
    """Tensors plus one JSON metadata entry, written atomically (safetensors: no pickle)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_bytes(path, save(tensors, metadata={meta_key: json.dumps(meta, sort_keys=True)}))


def read_safetensors(path: str | os.PathLike, meta_key: str, what: str) -> tuple[dict, Any]:
    """Tensors and the JSON metadata entry ``meta_key`` of a file written by ``write_safetensors``;
    errors name the file and say which kind of file (``what``) was expected."""
    path = require_file(path, what)
    return parse_safetensors(path.read_bytes(), path, meta_key, what)


def parse_safetensors(data: bytes, path: str | os.PathLike, meta_key: str, what: str) -> tuple[dict, Any]:
    """:func:`read_safetensors` of bytes already read (so a caller can hash exactly what it loads);
    ``path`` names them in errors."""
    import struct

    from safetensors.torch import load

    from ..errors import ClipimoError

    try:
        (size,) = struct.unpack("<Q", data[:8])
        if size > len(data) - 8:
            raise ValueError(f"header of {size} bytes in a file of {len(data)}")
        header = json.loads(data[8:8 + size])
        tensors = load(data)
    except Exception as err:  # struct, JSON and safetensors raise several types for damaged files
        raise ClipimoError(f"{what} {path} is not a readable safetensors file: {err}") from err
    raw = (header.get("__metadata__") or {}).get(meta_key) if isinstance(header, dict) else None
    if raw is None:
        raise ClipimoError(f"{path} is a safetensors file but not a clipimo {what} (no '{meta_key}' metadata)")
    return tensors, parse_json_object(raw, f"{what} {path}: its '{meta_key}' metadata")
