"""The plan's priors: measured by the last completed night of this deployment, else defaults.

"This deployment" is the same ``output_uri`` and target model: the latest run date before the
current one whose ``manifest.json`` exists (a failed night writes ``manifest.failed.json``
instead and is skipped). What it measured replaces each default it can:

- error rate: wrong answers / rows probed;
- verified rate: verified / explained failures;
- retry overhead: probe requests / (2 x explained) - 1;
- tokens per request: the probe's and QA's prompt and output tokens per request;
- rows per second per rank: rows / the ranks' device-busy seconds (the GPU pass, not the pod);
- seconds per teacher answer: the probe's teacher's average;
- the wrong answers' shares per stratum (for :func:`vlmprobe.budget.plan.allocate`).
"""

from __future__ import annotations

import logging
from typing import Any

from vlmprobe.budget.plan import Priors, Tokens

log = logging.getLogger("vlmprobe.budget")

# Output tokens per request kind: the schemas' answers are short JSON (a factor and a sentence;
# a verdict and a sentence; up to max_items QA pairs with rationales).
DEFAULT_OUTPUT_TOKENS = {"factor": 120, "verify": 60, "qa": 450}
DEFAULT_RETRY_OVERHEAD = 0.1
DEFAULT_VERIFIED_RATE = 1.0  # QA's reservation assumes every factor is verified until a night says otherwise
_QUESTION = "What is the color of the object on the left side of the picture?"  # a typical VQA question


def image_tokens_at(max_side: int, model: str = "", resolution: str | None = None) -> int:
    """Input tokens of a 4:3 image after downscaling to ``max_side`` (768 when sizes are kept), at
    ``resolution`` (media_resolution: a fixed count per image on most models, else by tiles)."""
    from vlmprobe.teacher.imageprep import image_tokens

    side = max_side if max_side > 0 else 768
    return image_tokens(side, max(1, side * 3 // 4), model, resolution)


def default_tokens(template_version: str, image_max_side: int, thinking_budget: int, model: str = "",
                   resolutions: dict[str, str] | None = None) -> dict[str, Tokens]:
    """Tokens per request kind from the real prompts with a typical question, and the image at each
    kind's media_resolution (``resolutions``; None: by tiles)."""
    from vlmprobe.teacher.imageprep import text_tokens
    from vlmprobe.teacher.prompts import factor_prompt, qa_prompt, verify_prompt
    from vlmprobe.teacher.templates import load_templates

    templates = load_templates(template_version)
    resolutions = resolutions or {}
    thinking = max(thinking_budget, 0)
    texts = {
        "factor": factor_prompt(templates, _QUESTION, "red", "blue", ["red", "blue", "green"]),
        "verify": verify_prompt(_QUESTION, "red", "blue", "color", "The object on the left is dark red."),
        "qa": qa_prompt(_QUESTION, "red", "blue", "color:dark_red", "The object on the left is dark red."),
    }
    return {kind: Tokens(prompt=image_tokens_at(image_max_side, model, resolutions.get(kind)) + text_tokens(text),
                         output=DEFAULT_OUTPUT_TOKENS[kind] + thinking)
            for kind, text in texts.items()}


def default_priors(*, expected_error_rate: float, images_per_s: float, template_version: str,
                   image_max_side: int, thinking_budget: int, model: str = "",
                   resolutions: dict[str, str] | None = None, latency_s: float = 5.0) -> Priors:
    return Priors(
        error_rate=expected_error_rate,
        latency_s=latency_s,
        verified_rate=DEFAULT_VERIFIED_RATE,
        retry_overhead=DEFAULT_RETRY_OVERHEAD,
        images_per_s=images_per_s,
        tokens=default_tokens(template_version, image_max_side, thinking_budget, model, resolutions),
        source="defaults",
    )


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def measured_priors(defaults: Priors, night: dict[str, Any], run_date: str) -> Priors:
    """``defaults`` with what one earlier night's manifest measured put in their place.

    ``night``: the figures :func:`vlmprobe.contracts.night_figures` reads off a manifest.
    A figure the night could not measure (nothing explained, no QA) keeps its default.
    """
    rows, wrong = night.get("rows", 0), night.get("wrong", 0)
    explained, verified = night.get("explained", 0), night.get("verified", 0)
    update: dict[str, Any] = {"source": f"night {run_date}"}
    if (rate := _ratio(wrong, rows)) is not None and rate > 0:
        update["error_rate"] = min(rate, 1.0)
    if (rate := _ratio(verified, explained)) is not None:
        update["verified_rate"] = min(rate, 1.0)
    probe_requests = night.get("probe_requests", 0)
    if (per := _ratio(probe_requests, 2 * explained)) is not None:
        update["retry_overhead"] = min(max(per - 1.0, 0.0), 10.0)
    if night.get("latency_s"):
        update["latency_s"] = float(night["latency_s"])
    if (speed := _ratio(rows, night.get("busy_s", 0.0))) is not None and night.get("ranks"):
        update["images_per_s"] = speed  # rows per busy second of one rank = per GPU
    tokens = dict(defaults.tokens)
    for kind, measured in (night.get("tokens") or {}).items():
        if kind in tokens and measured.get("requests"):
            n = measured["requests"]
            tokens[kind] = Tokens(prompt=round(measured["prompt_tokens"] / n), output=round(measured["output_tokens"] / n))
    update["tokens"] = tokens
    strata = night.get("wrong_by_stratum") or {}
    if strata:
        total = sum(strata.values())
        update["strata_wrong"] = {s: n / total for s, n in strata.items() if n > 0}
    return defaults.model_copy(update=update)
