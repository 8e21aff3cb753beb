"""The simulator answers the factor schema (an anyOf of category branches) like the probe's failures look."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

from vlmprobe.sim import GeminiSimulator
from vlmprobe.teacher.prompts import factor_prompt
from vlmprobe.teacher.schemas import FactorCompletion
from vlmprobe.teacher.templates import load_templates

QUESTIONS = [f"What color is the {shape}?" for shape in ("circle", "square", "triangle", "star", "heart")] + \
            [f"How many {shape}s are there?" for shape in ("circle", "square", "triangle", "star", "heart")] + \
            [f"Is the {shape} next to the box?" for shape in ("circle", "square", "triangle", "star", "heart")]


def _factor(sim: GeminiSimulator, question: str, prediction: str) -> dict:
    prompt = factor_prompt(load_templates(), question, "red", prediction, None)
    body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"responseMimeType": "application/json",
                                 "responseJsonSchema": FactorCompletion.model_json_schema()}}
    request = urllib.request.Request(f"{sim.base_url}/v1beta/models/gemini-2.5-flash:generateContent",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "x-goog-api-key": "k"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(json.loads(response.read())["candidates"][0]["content"]["parts"][0]["text"])


def test_factor_answers_follow_the_question_not_the_number_of_branches():
    templates = load_templates()
    assert "anyOf" in FactorCompletion.model_json_schema()  # the schema under test has category branches
    closed = {f.category: set(f.values) for f in templates.factors if f.closed}
    assert closed  # lighting and viewpoint in v1
    answers = []
    with GeminiSimulator(port=0, seed=5) as sim:
        for question in QUESTIONS:
            for prediction in ("blue", "green", "seven", "left"):
                answers.append((question, _factor(sim, question, prediction)))
    for _, a in answers:
        FactorCompletion.model_validate(a)
        if a["category"] in closed:  # a closed category's value comes from its own branch's enum
            assert a["value"] in closed[a["category"]], a
    by_kind = Counter()
    for question, a in answers:
        expected = "color" if "color" in question else "count" if "How many" in question else "spatial_relation"
        by_kind[a["category"] == expected] += 1
    # the question heuristic picks the category 80% of the time; branch-first drawing gave ~2/3
    # lighting or viewpoint (2 of 3 branches) whatever the question
    assert by_kind[True] >= 0.6 * len(answers), by_kind
    closed_share = sum(a["category"] in closed for _, a in answers) / len(answers)
    assert closed_share < 0.2, closed_share
