"""The night's plan: its arithmetic on a real night's numbers, and the explanation sample."""

from __future__ import annotations

import math
import random

import pytest

from vlmprobe.budget.history import default_priors, measured_priors
from vlmprobe.budget.plan import PlanInputs, allocate, plan_night
from vlmprobe.budget.select import ExplainSelector, explain_hash, question_type, selection_key, stratum_of
from vlmprobe.params import defaults

D = defaults()


def priors(**over):
    base = default_priors(expected_error_rate=over.pop("error_rate", D["expected_error_rate"]),
                          images_per_s=over.pop("images_per_s", D["target_images_per_s"]),
                          template_version="v1", image_max_side=D["teacher_image_max_side"],
                          thinking_budget=D["thinking_budget"], model=D["gemini_model"],
                          resolutions={k: D[f"teacher_media_resolution_{k}"] for k in ("factor", "verify", "qa")})
    return base.model_copy(update=over)


def inputs(**over):
    values = dict(rows=64 * 10_000, ranks=D["nproc_per_node"], gemini_model=D["gemini_model"],
                  requests_left_today=D["teacher_rpd"], teacher_rpm=D["teacher_rpm"], teacher_tpm=D["teacher_tpm"],
                  max_cost_usd=D["max_cost_usd"], probe_wall_factor=D["probe_wall_factor"],
                  probe_min_tail_s=D["probe_min_tail_s"], probe_tier=D["teacher_service_tier"],
                  qa_tier=D["teacher_service_tier"], qa_mode=D["qa_mode"],
                  batch_enqueued_tokens=D["teacher_batch_enqueued_tokens"])
    values.update(over)
    return PlanInputs(**values)


def test_a_tier1_night_at_the_defaults_fits_the_daily_quota():
    """64 files of ~10k rows at the defaults (tier 1: 1,000 rpm, 1M tpm, 10,000 rpd)."""
    plan = plan_night(inputs(), priors())
    assert plan.expected_wrong == math.ceil(640_000 * D["expected_error_rate"])
    assert plan.limited_by == "daily_quota"
    # probe and QA together stay within the project's 10,000 requests, retries included
    assert plan.probe_requests + plan.qa_requests <= 10_000
    worst = plan.explain_budget * (plan.requests_per_explained + plan.qa_requests_per_explained)
    assert worst <= 10_000 * 0.98
    # and spend nearly all of it: the night is not needlessly small
    assert worst >= 10_000 * 0.95
    # the explanations fit in the GPU pass: time is not what limits a tier-1 night
    assert plan.caps["time"] > plan.explain_budget
    assert plan.teacher_window_s == pytest.approx(D["probe_wall_factor"] * plan.target_pass_s, rel=1e-6)
    assert 0 < plan.explain_fraction < 0.05
    assert "limited by daily_quota" in plan.summary()


def test_tier2_is_limited_by_time_or_nothing():
    # tier 2 of 2.5 flash: 2,000 rpm, 3M tpm, 100,000 rpd
    plan = plan_night(inputs(requests_left_today=100_000, teacher_rpm=2000, teacher_tpm=3_000_000), priors())
    assert plan.probe_requests + plan.qa_requests <= 100_000
    assert plan.explain_budget < plan.expected_wrong
    assert plan.limited_by == "daily_quota"


def test_time_limits_a_short_pass_with_a_slow_teacher():
    plan = plan_night(inputs(rows=20_000, requests_left_today=None, teacher_rpm=60), priors())
    # 60 rpm x 0.98 = 0.98 requests/s over (window - 10 s), 2.2 requests per explained failure
    window = max(D["probe_wall_factor"] * plan.target_pass_s, plan.target_pass_s + D["probe_min_tail_s"])
    expected = math.floor(60 * 0.98 / 60 * (window - 10) / plan.requests_per_explained)
    assert plan.caps["time"] == expected
    assert plan.limited_by == "time"
    assert plan.probe_requests is None and plan.qa_requests is None  # no daily limit: nothing to reserve


def test_cost_cap_limits_by_budget():
    plan = plan_night(inputs(requests_left_today=None, max_cost_usd=1.0), priors())
    per = plan.cost_per_explained_usd + plan.qa_cost_per_explained_usd
    assert plan.caps["budget"] == math.floor(1.0 / per)
    assert plan.limited_by == "budget"


def test_no_limit_explains_everything():
    plan = plan_night(inputs(requests_left_today=None, teacher_rpm=0, teacher_tpm=0), priors())
    assert plan.explain_budget is None and plan.explain_fraction == 1.0 and plan.limited_by == "none"


def test_nothing_left_today_plans_nothing():
    plan = plan_night(inputs(requests_left_today=0), priors())
    assert plan.explain_budget == 0 and plan.probe_requests == 0 and plan.qa_requests == 0


def test_allocation_does_not_starve_rare_strata():
    shares = {"open|a": 0.97, "yes_no|b": 0.02, "multiple_choice|c": 0.01}
    fractions = allocate(shares, expected_wrong=100_000, planned=3_000)
    explained = {s: fractions[s] * 100_000 * shares[s] for s in shares}
    assert sum(explained.values()) == pytest.approx(3_000, rel=1e-4)
    assert explained["multiple_choice|c"] >= 500  # proportional would give it 30
    assert fractions["multiple_choice|c"] > fractions["open|a"]


def test_measured_priors_replace_defaults():
    night = {"rows": 1000, "wrong": 300, "explained": 100, "verified": 80, "probe_requests": 230, "ranks": 2,
             "busy_s": 20.0, "tokens": {"qa": {"requests": 10, "prompt_tokens": 9000, "output_tokens": 3000}},
             "wrong_by_stratum": {"open|-": 200, "yes_no|-": 100}}
    p = measured_priors(priors(), night, "2026-11-24")
    assert p.error_rate == 0.3 and p.verified_rate == 0.8 and p.retry_overhead == pytest.approx(0.15)
    assert p.images_per_s == 50 and p.tokens["qa"].prompt == 900 and p.source == "night 2026-11-24"
    assert p.strata_wrong == {"open|-": pytest.approx(2 / 3), "yes_no|-": pytest.approx(1 / 3)}


def test_question_types_and_strata():
    assert question_type(None) == "open" and question_type(["Yes", "No"]) == "yes_no"
    assert question_type(["a", "b", "c"]) == "multiple_choice"
    assert stratum_of(["yes", "no"], "vqa") == "yes_no|vqa" and stratum_of([], None) == "open|-"


def _wrong_rows(n, seed=1):
    rng = random.Random(seed)
    return [(f"row-{i}", rng.choice(["open|a", "yes_no|a", "open|b"])) for i in range(n)]


def _chosen(plan, parts, rows):
    """Explained ids when ``rows`` are split into ``parts`` contiguous ranks (every row is wrong)."""
    chosen = set()
    size = math.ceil(len(rows) / parts)
    for r in range(parts):
        mine = rows[r * size:(r + 1) * size]
        sel = ExplainSelector(plan, len(mine), seed=7)
        for start in range(0, len(mine), 16):
            batch = mine[start:start + 16]
            chosen.update(i for i, s in batch if sel.choose(s, i))
            sel.after_batch(len(batch))
    return chosen


def test_same_rows_explained_for_any_rank_count():
    rows = _wrong_rows(4000)
    plan = plan_night(inputs(rows=4000, requests_left_today=None, teacher_rpm=0, teacher_tpm=0,
                             max_cost_usd=0.0), priors(error_rate=1.0))
    plan = plan.model_copy(update={"explain_budget": 800, "explain_fraction": 0.2})
    one, four = _chosen(plan, 1, rows), _chosen(plan, 4, rows)
    assert one == four
    assert 700 <= len(one) <= 900
    # a smaller budget explains a subset of what a larger one explains
    small = _chosen(plan.model_copy(update={"explain_budget": 400, "explain_fraction": 0.1}), 2, rows)
    assert small <= one


def test_fraction_goes_down_when_the_night_is_wronger_than_planned():
    rows = _wrong_rows(4000)
    plan = plan_night(inputs(rows=4000, requests_left_today=None, teacher_rpm=0, teacher_tpm=0), priors())
    # planned for an error rate of 0.25: 1,000 expected wrong, budget 500 -> fraction 0.5; every row is wrong
    plan = plan.model_copy(update={"explain_budget": 500, "explain_fraction": 0.5, "expected_wrong": 1000})
    sel = ExplainSelector(plan, 4000, seed=3)
    chosen, scales = 0, []
    for start in range(0, 4000, 16):
        batch = rows[start:start + 16]
        chosen += sum(sel.choose(s, i) for i, s in batch)
        sel.after_batch(len(batch))
        scales.append(sel.scale)
    assert scales == sorted(scales, reverse=True)  # never up
    assert sel.lowered >= 1
    assert 450 <= chosen <= 560  # within the budget (and its tolerance), not the 2,000 of the unlowered plan


def test_explain_hash_is_uniform_and_keyed():
    key = selection_key(0)
    values = [explain_hash(key, f"r{i}") for i in range(20_000)]
    assert 0.48 < sum(v < 0.5 for v in values) / len(values) < 0.52
    assert explain_hash(selection_key(1), "r1") != explain_hash(key, "r1")


def test_flex_and_batch_halve_the_cost_of_an_explained_failure():
    standard = plan_night(inputs(requests_left_today=None, max_cost_usd=10.0), priors())
    flex = plan_night(inputs(requests_left_today=None, max_cost_usd=10.0, probe_tier="flex", qa_mode="batch"),
                      priors())
    # (each request is rounded to a micro-dollar: the halves agree to a percent)
    assert flex.cost_per_explained_usd == pytest.approx(standard.cost_per_explained_usd / 2, rel=0.01)
    assert flex.qa_cost_per_explained_usd == pytest.approx(standard.qa_cost_per_explained_usd / 2, rel=0.01)
    assert flex.caps["budget"] == pytest.approx(2 * standard.caps["budget"], rel=0.01)


def test_batch_qa_leaves_the_days_requests_to_the_probe_and_is_capped_by_enqueued_tokens():
    online = plan_night(inputs(), priors())
    batch = plan_night(inputs(qa_mode="batch", batch_enqueued_tokens=1_000_000), priors())
    assert batch.qa_requests == math.ceil(batch.explain_budget * 0.1 * batch.qa_requests_per_explained)
    assert batch.probe_requests + batch.qa_requests <= 10_000
    per = batch.requests_per_explained + 0.1 * batch.qa_requests_per_explained
    assert batch.caps["daily_quota"] == math.floor(10_000 * 0.98 / per)
    assert batch.explain_budget > online.explain_budget  # the day's requests all go to explanations
    qa = batch.priors.tokens["qa"]
    assert batch.qa_failures == math.floor(1_000_000 / (qa.prompt + qa.output))
    assert online.qa_failures == math.floor(online.qa_requests / online.requests_per_qa_failure)


def test_a_slow_tier_leaves_its_latency_to_the_last_answers():
    fast = plan_night(inputs(rows=20_000, requests_left_today=None, teacher_rpm=60), priors())
    slow = plan_night(inputs(rows=20_000, requests_left_today=None, teacher_rpm=60, tail_latency_s=600), priors())
    assert slow.caps["time"] < fast.caps["time"]
