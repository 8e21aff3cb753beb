"""The contracts' shared machinery: a typed part, a versioned file, one-line errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from vlmprobe.errors import InputError

SCHEMA_VERSION = 1
Number = int | float  # where the steps write an int or a float (an empty sum is the int 0): kept as written


class Part(BaseModel):
    """A typed part of a contract; fields named in ``OMIT_WHEN_NONE`` are left out of the JSON when None."""

    model_config = ConfigDict(extra="forbid")
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self.OMIT_WHEN_NONE:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class Contract(Part):
    """A file one step writes and another reads: versioned, written and read only through here."""

    FILE: ClassVar[str]  # where it lives, for error messages and docs
    READS: ClassVar[tuple[int, ...]] = (SCHEMA_VERSION,)  # the versions this code reads

    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()

    def write(self, uri: str) -> None:
        """Write the file (atomically, sorted keys; safe to repeat: it replaces the file)."""
        from vlmprobe.io import write_json

        write_json(uri, self.to_json())

    @classmethod
    def check_version(cls, data: Any, source: str) -> int:
        """The file's schema version, or :class:`InputError` (one line) when this code cannot read it."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object ({cls.FILE}), got {type(data).__name__}")
        version = data.get("schema_version", 1)  # written before the field existed: version 1
        if type(version) is not int or version not in cls.READS:
            reads = ", ".join(str(v) for v in cls.READS)
            raise InputError(f"{source} has schema_version {version!r}, this vlmprobe reads schema_version {reads}: "
                             "another version of vlmprobe wrote it; use that version, or rerun the step that "
                             "writes it with this one")
        return version

    @classmethod
    def from_json(cls, data: Any, source: str) -> Self:
        """The model of a parsed file (``source`` names it in errors): version checked, then every field."""
        cls.check_version(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise InputError(f"{source} does not match {cls.FILE} schema_version {data.get('schema_version', 1)}: "
                             f"{first_problem(e)}; was it written by this version of vlmprobe?") from e

    @classmethod
    def read(cls, uri: str) -> Self:
        """The model of the file at ``uri``; :class:`InputError` (one line) when it is not one this code reads."""
        return cls.read_with_sha256(uri)[0]

    @classmethod
    def read_with_sha256(cls, uri: str) -> tuple[Self, str]:
        """The model and the SHA-256 of the file's bytes (the QA journal's fingerprint names its plan so)."""
        from vlmprobe.io import read_bytes

        raw = read_bytes(uri)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{uri} is not JSON ({e}); was it written by vlmprobe?") from e
        return cls.from_json(data, uri), hashlib.sha256(raw).hexdigest()


def first_problem(e: ValidationError) -> str:
    errors = e.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{where}: {first['msg']}{more}".split())
