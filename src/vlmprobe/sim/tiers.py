"""Service tiers in generateContent: flex latency and shedding, priority downgrades, the tier served.

A request names its tier top-level (``"serviceTier": "flex"``, as google-genai 3.6.1 sends
``GenerateContentConfig.service_tier``); one that names none is standard and meets none of this
(its answer, faults and headers are as before). What Gemini documents, and the simulator does:

- flex answers in minutes (Google's target: 1 to 15 min): ``flex_latency_s`` (±50%) on top of the
  request's latency; flex is sheddable, and a shed request is answered 503 UNAVAILABLE (the
  cookbook's ``quickstarts/Inference_tiers.ipynb``: "Flex is sheddable and fails with 503 errors"),
  here at once, for ``flex_shed_rate`` of flex requests;
- priority over its limit is served at standard instead of failing (the priority-inference page):
  ``priority_downgrade_rate`` of priority requests;
- the tier that served the request is in the ``x-gemini-service-tier`` response header (the
  header the priority-inference page and the cookbook read).

Each flex or priority request draws from an RNG of its own (seed and request number), so the
seeded faults of every request stay as they were.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from vlmprobe.sim.protocol import google_error, lookup

if TYPE_CHECKING:
    from vlmprobe.sim.server import GeminiSimulator

SERVED_TIER_HEADER = "x-gemini-service-tier"
TIERS = ("standard", "flex", "priority")
SHED_MESSAGE = "The flex tier has no capacity for this request right now. Please try again later."


def asked_tier(body: Any) -> str | None:
    """The tier a request body names (``flex``, ``standard``, ``priority``; also spelled
    ``SERVICE_TIER_FLEX``), or None when it names none or one the simulator does not know."""
    value = lookup(body, "serviceTier") if isinstance(body, dict) else None
    if not isinstance(value, str):
        return None
    tier = value.strip().lower().removeprefix("service_tier_")
    return tier if tier in TIERS else None


def serve(sim: GeminiSimulator, number: int, tier: str) -> tuple[str, tuple[int, Any] | None]:
    """The tier request ``number`` is served at, and the shed answer (503) when a flex request is
    shed; otherwise a flex request first waits its flex latency."""
    rng = random.Random(f"tier:{sim.seed}:{number}")
    if tier == "flex":
        if rng.random() < sim.flex_shed_rate:
            return tier, (503, google_error(503, "UNAVAILABLE", SHED_MESSAGE))
        if sim.flex_latency_s:
            time.sleep(sim.flex_latency_s * rng.uniform(0.5, 1.5))
        return tier, None
    if tier == "priority" and rng.random() < sim.priority_downgrade_rate:
        return "standard", None
    return tier, None
