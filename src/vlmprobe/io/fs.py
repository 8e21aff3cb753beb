"""URIs through ``pyarrow.fs``: one API for local disks, ``gs://`` and ``s3://``.

Writes are atomic on every store: a failed or interrupted write leaves nothing under the final
name. Locally a file is written under a temporary name next to its final one and renamed when
complete. On object stores that is not enough: pyarrow's output stream *completes* the upload
when the ``with`` block raises (and its destructor does the same), so a crash mid-write would
publish a partial object. There the data goes to a temporary object ``.NAME.tmp-XXXXXXXX`` next
to the final one, which is moved (server-side copy + delete) to its final name only when the
block succeeds, and deleted when it fails. A killed writer can leave such a temporary object
(or file) behind; :meth:`vlmprobe.io.layout.RunLayout.invalidate` removes them on the next run.
S3 copies one object in one request, so a single output file must stay below 5 GB there.

Credentials come from the environment, as pyarrow's defaults find them: Google application
default credentials (workload identity on GKE) for ``gs://``, the AWS default chain (IRSA's
web identity token on EKS, instance profiles, ``AWS_*`` variables) for ``s3://``. Endpoint
overrides, for emulators in tests: ``AWS_ENDPOINT_URL`` (read by pyarrow itself) and
``STORAGE_EMULATOR_HOST`` (``http://host:port``, the GCS emulators' convention; anonymous).

Names starting with ``_`` or ``.`` (markers, journals, temporary files) are never listed as data.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import IO, Any
from urllib.parse import urlparse

from pyarrow import fs as pafs

TMP_MARK = ".tmp-"  # temporary names are ".{final name}.tmp-{8 hex}"
REMOTE_BUFFER = 8 << 20  # read-ahead for object-store streams: one ranged GET per 8 MB, not per line


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


@lru_cache(maxsize=64)
def _remote_filesystem(scheme: str, bucket: str, env: tuple[str | None, ...]) -> pafs.FileSystem:
    """One filesystem per (scheme, bucket, endpoint settings): S3 resolves a bucket's region once."""
    emulator = env[0]
    if scheme == "gs" and emulator:
        url = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(anonymous=True, scheme=url.scheme or "http", endpoint_override=url.netloc)
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return fs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if is_local(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(path)
    url = urlparse(uri)
    scheme = "gs" if url.scheme == "gcs" else url.scheme
    if scheme not in ("gs", "s3"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    env = (os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("AWS_ENDPOINT_URL"),
           os.environ.get("AWS_ENDPOINT_URL_S3"))
    fs = _remote_filesystem(scheme, url.netloc, env)
    return fs, f"{url.netloc}/{url.path.lstrip('/')}".rstrip("/")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/``."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def is_temp_name(name: str) -> bool:
    """A temporary name left by :func:`atomic_write` (a writer killed mid-write leaves one)."""
    return name.startswith(".") and TMP_MARK in name


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _walk(uri: str) -> Iterator[tuple[str, str, pafs.FileInfo]]:
    """(relative path, URI, info) of every file under ``uri``, hidden ones included."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        yield basename(uri), uri, info
        return
    for item in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if item.type == pafs.FileType.File:
            rel = item.path[len(path):].lstrip("/")
            yield rel, join(uri, rel), item


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Data files under ``uri`` (recursively) whose name ends with ``suffix``, as sorted URIs.

    Leaves out every path with a part that starts with ``_`` or ``.`` below ``uri`` (markers,
    journals, temporary files) and the folder markers some object stores keep.
    """
    found = [u for rel, u, _ in _walk(uri)
             if rel.endswith(suffix) and not any(p.startswith(("_", ".")) for p in rel.split("/"))]
    return sorted(found)


def list_all(uri: str) -> list[str]:
    """Every file under ``uri``, hidden ones included (for cleanup); [] when ``uri`` does not exist."""
    try:
        return sorted(u for _, u, _ in _walk(uri))
    except FileNotFoundError:
        return []


def list_dir(uri: str) -> list[str]:
    """Files directly in folder ``uri``, hidden ones included; [] when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    items = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(join(uri, item.base_name) for item in items if item.type == pafs.FileType.File)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def open_input_stream(uri: str) -> Any:
    """A sequential binary stream of ``uri``; object stores read ahead in 8 MB requests."""
    fs, path = resolve(uri)
    buffer = None if is_local(uri) else REMOTE_BUFFER
    return fs.open_input_stream(path, compression=None, buffer_size=buffer)


def open_input_file(uri: str) -> Any:
    """A seekable binary file (ranged reads on object stores)."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def read_range(uri: str, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of ``uri`` (one ranged read on object stores)."""
    with open_input_file(uri) as f:
        f.seek(start)
        return f.read(stop - start)


def _temp_name(path: str) -> str:
    parent, name = path.rsplit("/", 1)
    return f"{parent}/.{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "w", content_type: str | None = None) -> Iterator[IO]:
    """Open ``uri`` for writing; the file appears under its name only if the block succeeds.

    An existing file of that name is replaced (atomically locally; on object stores by the
    final copy). Nothing appears, and no temporary file stays, when the block raises.
    ``content_type``: the object's ``Content-Type`` on object stores (the final copy keeps it),
    so that a browser shows an HTML file rather than downloading it; local files have none.
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_write supports modes 'w' and 'wb'")
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    tmp = _temp_name(path)
    if is_local(uri):
        fs.create_dir(parent, recursive=True)
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
    done = False
    try:
        metadata = {"Content-Type": content_type} if content_type else None
        with fs.open_output_stream(tmp, metadata=metadata) as raw:
            if "b" in mode:
                yield raw
            else:
                text = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
                yield text
                text.flush()
                text.detach()
        fs.move(tmp, path)
        done = True
    finally:
        if not done:  # the stream completed the temporary object on its way out: remove it
            with contextlib.suppress(OSError, FileNotFoundError):
                fs.delete_file(tmp)


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    with atomic_write(uri, "wb", content_type) as f:
        f.write(data)


def write_json(uri: str, obj: Any) -> None:
    with atomic_write(uri) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def remove_tree(uri: str) -> None:
    """Delete a folder and everything in it; no error if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        # GCS: the contents are gone but there was no folder-marker object to delete
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise


def remove_file(uri: str) -> None:
    """Delete one file; no error if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)


def remove_files(uris: Iterable[str]) -> list[str]:
    """Delete these files (missing ones are fine); returns the URIs that were there."""
    removed = []
    for uri in uris:
        fs, path = resolve(uri)
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            continue
        except OSError:
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                raise
            continue
        removed.append(uri)
    return removed
