"""The resume journals' headers (``_fingerprint.json``): the settings a journal's entries were made with."""

from __future__ import annotations

from typing import Any, ClassVar

from vlmprobe.contracts.base import Contract


# -- the resume journals' headers -----------------------------------------------------------------

class JournalHeader(Contract):
    """A resume journal's ``_fingerprint.json``: the settings its entries were made with.

    Written typed; read back as recorded (:meth:`recorded`), because a header of another journal
    format is not an error but another job's journal, which the step discards with a warning
    naming what changed — after the version check that every contract gets.
    """

    NAME: ClassVar[str] = "_fingerprint.json"  # in the journal's folder

    @classmethod
    def recorded(cls, uri: str) -> dict[str, Any]:
        """The settings recorded in an existing header (without ``schema_version``); version checked."""
        from vlmprobe.io import read_json

        data = read_json(uri)
        cls.check_version(data, uri)
        return {k: v for k, v in data.items() if k != "schema_version"}

    def settings(self) -> dict[str, Any]:
        """The settings, as hashed into the entries' fingerprint (``schema_version`` is not one)."""
        return self.model_dump(exclude={"schema_version"})


class ProbeJournalHeader(JournalHeader):
    """``probe/_journal/_fingerprint.json``: what the probe's outputs depend on (:mod:`vlmprobe.probe.resume`)."""

    FILE: ClassVar[str] = "probe/_journal/_fingerprint.json"

    journal_format: int
    target_model: str
    max_new_tokens: int
    gemini_model: str
    template_version: str
    thinking_budget: int
    teacher_image_max_side: int
    max_output_tokens_factor: int
    max_output_tokens_verify: int
    target_revision: str = ""  # the target's pinned commit; "" for a local folder or a server
    # what the teacher sees of each image (a journal made at another resolution explained other images)
    teacher_media_resolution_factor: str = "unspecified"
    teacher_media_resolution_verify: str = "unspecified"


class QAJournalHeader(JournalHeader):
    """``qa/_journal/shard-NNNNN/_fingerprint.json``: the shard's plan and teacher settings, and their hash."""

    FILE: ClassVar[str] = "qa/_journal/shard-NNNNN/_fingerprint.json"

    fp: str  # the hash of the other fields; every journal record carries it
    format: int
    plan_sha256: str
    shard_index: int
    start: int
    stop: int
    gemini_model: str
    max_items: int
