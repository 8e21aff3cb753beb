"""What the simulator counts and records: :class:`SimStats` (``GET /stats``) and the request log
(``GET /requests``, and a JSONL file when asked), so tests can see what a client sent."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

class SimStats:
    """Thread-safe counters of the simulator's generateContent requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.successes_by_model: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.thinking_tokens = 0
        self.quota_rejections: Counter[str] = Counter()  # 429s by quota: rpm, tpm, rpd, quota

    def begin(self, model: str) -> int:
        """Count a request's arrival; returns its number (0-based), which seeds its faults."""
        with self._lock:
            number = self.requests
            self.requests += 1
            self.by_model[model] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return number

    def end(self, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.by_status[str(status)] += 1

    def reserve_success(self, model: str, quota: int | None) -> bool:
        """Take one of the model's successful answers; False once its quota is spent."""
        with self._lock:
            if quota is not None and self.successes_by_model[model] >= quota:
                return False
            self.successes_by_model[model] += 1
            return True

    def add_tokens(self, prompt: int, output: int, thinking: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.output_tokens += output
            self.thinking_tokens += thinking

    def rejected(self, quota: str) -> None:
        with self._lock:
            self.quota_rejections[quota] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "by_model": dict(self.by_model),
                "successes_by_model": dict(self.successes_by_model),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
                "thinking_tokens": self.thinking_tokens,
                "quota_rejections": dict(self.quota_rejections),
            }


class RequestLog:
    """Every generateContent request's entry, in arrival order; each also appended to ``path``
    as a JSON line when given. Thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        """A copy of every entry so far."""
        with self._lock:
            return [dict(entry) for entry in self._entries]
