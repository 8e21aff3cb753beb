"""The File API, as google-genai 3.6.1 uploads and downloads a file: the Batch API's input and output.

Upload (``client.files.upload``) is Google's resumable protocol in two steps:

1. ``POST /upload/{v}/files`` with the API key, headers ``X-Goog-Upload-Protocol: resumable`` and
   ``X-Goog-Upload-Command: start``, and a JSON body ``{"file": {"mimeType", "sizeBytes",
   "displayName"?}}``; the answer's ``X-Goog-Upload-URL`` header is the upload session's URL;
2. ``POST`` of the bytes to that URL, in 8 MB chunks (``X-Goog-Upload-Command: upload``, the last
   ``upload, finalize``), with no API key (the session URL is the credential); each chunk is
   answered ``X-Goog-Upload-Status: active``, the last ``final`` with ``{"file": File}``.

The simulator finalizes once it holds the ``sizeBytes`` the start announced (its routes see
bodies, not request headers). Download (``client.files.download``) is ``GET
/{v}/files/{id}:download?alt=media``, answered with the bytes. Files live in memory until the
simulator stops.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmprobe.sim import faults
from vlmprobe.sim.protocol import RawBody, google_error, json_body, lookup

if TYPE_CHECKING:
    from vlmprobe.sim.server import GeminiSimulator

START_PATH = re.compile(r"^/upload/(v1beta|v1)/files$")
SESSION_PATH = re.compile(r"^/upload/(v1beta|v1)/files/sessions/([a-z0-9]+)$")
DOWNLOAD_PATH = re.compile(r"^/(?:download/)?(v1beta|v1)/files/([a-z0-9-]+):download$")


def now_iso() -> str:
    """The time as Google's APIs write it (RFC 3339, UTC, Z)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class StoredFile:
    file_id: str
    display_name: str
    mime_type: str
    data: bytes
    source: str  # UPLOADED (a user's) or GENERATED (a batch job's results)
    created: str = field(default_factory=now_iso)

    def resource(self, base_url: str, version: str = "v1beta") -> dict[str, Any]:
        """The File resource, as the API returns it."""
        out = {"name": f"files/{self.file_id}", "mimeType": self.mime_type, "sizeBytes": str(len(self.data)),
               "createTime": self.created, "updateTime": self.created, "state": "ACTIVE", "source": self.source,
               "uri": f"{base_url}/{version}/files/{self.file_id}"}
        if self.display_name:
            out["displayName"] = self.display_name
        if self.source == "GENERATED":
            out["downloadUri"] = f"{base_url}/{version}/files/{self.file_id}:download?alt=media"
        return out


@dataclass
class _Session:
    size: int
    mime_type: str
    display_name: str
    version: str
    data: bytearray = field(default_factory=bytearray)


class FileStore:
    """The simulator's files and open upload sessions (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self._sessions: dict[str, _Session] = {}
        self.uploads = 0

    def add(self, data: bytes, mime_type: str, display_name: str = "", source: str = "GENERATED") -> StoredFile:
        """Store ``data`` as a new file; returns it (its name is ``files/{file_id}``)."""
        stored = StoredFile(uuid.uuid4().hex[:16], display_name, mime_type, bytes(data), source)
        with self._lock:
            self._files[stored.file_id] = stored
        return stored

    def get(self, name: str) -> StoredFile | None:
        """The file named ``files/{id}`` (or ``{id}``), or None."""
        with self._lock:
            return self._files.get(name.removeprefix("files/"))

    def open_session(self, size: int, mime_type: str, display_name: str, version: str) -> str:
        session_id = uuid.uuid4().hex
        with self._lock:
            self._sessions[session_id] = _Session(size, mime_type, display_name, version)
        return session_id

    def append(self, session_id: str, chunk: bytes) -> tuple[_Session, bool] | None:
        """Add a chunk to an open session: (the session, whether it is complete); None if unknown."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            session.data += chunk
            done = len(session.data) >= session.size
            if done:
                del self._sessions[session_id]
                self.uploads += 1
            return session, done


def start_upload(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``POST /upload/{v}/files``: opens an upload session; its URL is in ``X-Goog-Upload-URL``."""
    if sim.fail in ("invalid_key", "401", "403"):  # a key Gemini refuses is refused here too
        return faults.fail_error(sim.fail, "files", api_key)
    try:
        body = json.loads(raw or b"{}")
        meta = body.get("file") or {}
        size = int(lookup(meta, "sizeBytes") or 0)
    except (ValueError, AttributeError, TypeError):
        return 400, google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    session_id = sim.files.open_session(size, str(lookup(meta, "mimeType") or "application/octet-stream"),
                                        str(lookup(meta, "displayName") or ""), match.group(1))
    url = f"{sim.base_url}/upload/{match.group(1)}/files/sessions/{session_id}"
    return 200, json_body({}, {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})


def upload_chunk(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """A chunk of an upload: ``active`` until the announced size is reached, then ``final`` with the File."""
    appended = sim.files.append(match.group(2), raw)
    if appended is None:
        return 404, google_error(404, "NOT_FOUND", "No such upload session.")
    session, done = appended
    if not done:
        return 200, RawBody(b"", "text/plain", {"X-Goog-Upload-Status": "active"})
    stored = sim.files.add(bytes(session.data), session.mime_type, session.display_name, source="UPLOADED")
    return 200, json_body({"file": stored.resource(sim.base_url, session.version)}, {"X-Goog-Upload-Status": "final"})


def download(sim: GeminiSimulator, match: re.Match[str], raw: bytes, api_key: str) -> tuple[int, Any]:
    """``GET /{v}/files/{id}:download?alt=media``: the file's bytes."""
    stored = sim.files.get(match.group(2))
    if stored is None:
        return 404, google_error(404, "NOT_FOUND", f"File files/{match.group(2)} not found.")
    return 200, RawBody(stored.data, stored.mime_type)
