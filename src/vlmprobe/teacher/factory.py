"""Build the process's one teacher client from a step config."""

from __future__ import annotations

from typing import Any


def make_teacher(cfg: Any):
    """A :class:`~vlmprobe.teacher.client.Teacher` for a config with the TeacherSettings fields."""
    from vlmprobe.teacher.client import RetryPolicy, Teacher

    return Teacher(cfg.gemini_model, concurrency=cfg.concurrency, request_delay=cfg.request_delay,
                   retry=RetryPolicy(max_attempts=cfg.max_attempts), timeout_s=cfg.request_timeout_s)
