"""URIs through ``pyarrow.fs``: one API for local disks and object stores.

Writes are atomic: a file is written under a temporary name next to its final one and
renamed when complete, so a reader (or a rerun) never sees half a file. Object stores
(gs://, s3://) publish an object only when its upload completes, so there the final name is
written directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from pyarrow import fs as pafs


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if _is_local(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(path)
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/``."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Every file under ``uri`` (recursively) whose name ends with ``suffix``, as sorted URIs."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        return [uri]
    selector = pafs.FileSelector(path, recursive=True)
    found = []
    for item in fs.get_file_info(selector):
        name = item.base_name
        if item.type == pafs.FileType.File and name.endswith(suffix) and not name.startswith((".", "_")):
            found.append(_to_uri(uri, path, item.path))
    return sorted(found)


def _to_uri(base_uri: str, base_path: str, path: str) -> str:
    rel = path[len(base_path):].lstrip("/")
    return join(base_uri, rel) if rel else base_uri


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "w") -> Iterator[IO]:
    """Open ``uri`` for writing; the file appears under its name only if the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError("atomic_write supports modes 'w' and 'wb'")
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if _is_local(uri):
        tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with fs.open_output_stream(path) as raw:
        if "b" in mode:
            yield raw
        else:
            import io

            text = io.TextIOWrapper(raw, encoding="utf-8")
            yield text
            text.flush()
            text.detach()


def write_json(uri: str, obj: Any) -> None:
    with atomic_write(uri) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def remove_tree(uri: str) -> None:
    """Delete a folder and everything in it; no error if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    fs.delete_dir(path)


def remove_file(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)
