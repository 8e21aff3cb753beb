"""Quotas, enforced per model the way Gemini does, and the 429s that name them.

:class:`QuotaWindows` counts requests and input tokens per rolling window (rpm, tpm) and
requests per day (rpd); a refused request does not count. :func:`quota_error` words the 429 as
Gemini does: a QuotaFailure naming the quota's metric and id, and a RetryInfo saying when a slot
frees. :func:`model_quota_error` is the older cap on successful answers (no RetryInfo).
"""

from __future__ import annotations

import collections
import threading
import time
from collections import Counter
from typing import Any

from vlmprobe.sim.protocol import RPC, google_error

_RATE_LIMITS_HELP = {"@type": RPC + "Help", "links": [
    {"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}
# The quotas as Gemini names them in a 429's QuotaFailure: (quotaMetric, quotaId).
QUOTA_NAMES = {
    "rpm": ("generativelanguage.googleapis.com/generate_content_paid_tier_requests",
            "GenerateRequestsPerMinutePerProjectPerModel"),
    "tpm": ("generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
            "GenerateContentPaidTierInputTokensPerModelPerMinute"),
    "rpd": ("generativelanguage.googleapis.com/generate_content_paid_tier_requests",
            "GenerateRequestsPerDayPerProjectPerModel"),
}


def _retry_delay(seconds: float) -> str:
    return f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".") + "s"


def quota_error(quota: str, model: str, limit: int, delay_s: float) -> dict[str, Any]:
    """A 429 as Gemini words it: the quota's metric and id in a QuotaFailure, and a RetryInfo."""
    metric, quota_id = QUOTA_NAMES[quota]
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
        f"* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\n"
        f"Please retry in {delay_s:.2f}s."
    )
    violation = {"quotaMetric": metric, "quotaId": quota_id,
                 "quotaDimensions": {"location": "global", "model": model}, "quotaValue": str(limit)}
    return google_error(429, "RESOURCE_EXHAUSTED", message, [
        {"@type": RPC + "QuotaFailure", "violations": [violation]}, _RATE_LIMITS_HELP,
        {"@type": RPC + "RetryInfo", "retryDelay": _retry_delay(delay_s)}])


def model_quota_error(model: str, quota: int) -> dict[str, Any]:
    """The 429 once a model's successful answers (the older ``quota``) are spent: no RetryInfo."""
    message = f"Quota exceeded for metric: generate_content_requests, limit: {quota}, model: {model}."
    return google_error(429, "RESOURCE_EXHAUSTED", message)


class QuotaWindows:
    """Each model's requests and input tokens in the rolling window, and its requests today. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._days: Counter[str] = Counter()

    def admit(self, model: str, prompt_tokens: int, *, rpm: int | None, tpm: int | None, rpd: int | None,
              window_s: float) -> tuple[str, int, float] | None:
        """Count the request against the model's quotas; (quota, limit, retry delay) when one refuses it."""
        with self._lock:
            now = time.monotonic()
            window = self._windows[model]
            while window and window[0][0] <= now - window_s:
                window.popleft()
            if rpd is not None and self._days[model] >= rpd:
                return "rpd", rpd, 43.0  # Gemini's RetryInfo on a daily 429 is short: it is no promise
            if rpm is not None and len(window) >= rpm:
                return "rpm", rpm, window[0][0] + window_s - now if window else window_s
            if tpm is not None:
                used = sum(tokens for _, tokens in window)
                if used + prompt_tokens > tpm:
                    freed, delay = used + prompt_tokens - tpm, window_s
                    for at, tokens in window:  # when enough of the window's tokens have left it
                        freed -= tokens
                        if freed <= 0:
                            delay = at + window_s - now
                            break
                    return "tpm", tpm, delay
            window.append((now, prompt_tokens))
            self._days[model] += 1
            return None
