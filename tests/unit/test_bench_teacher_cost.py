"""bench/teacher_cost.py: its goals, a miss exits 1, and a small real run on the simulator meets them."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_teacher_cost", REPO / "bench" / "teacher_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("batch_cost,batch_items,flex_cost,code,last", [
    (0.5, 100, 0.5, 0, "goals: QA batch per 1,000 items vs standard online 0.50x (<= 0.55) met; "
                       "probe at flex vs standard 0.50x (<= 0.55) met"),
    (0.6, 100, 0.5, 1, "goals: QA batch per 1,000 items vs standard online 0.60x (<= 0.55) MISSED; "
                       "probe at flex vs standard 0.50x (<= 0.55) met"),
    (0.5, 90, 0.5, 1, "goals: QA batch per 1,000 items vs standard online 0.56x (<= 0.55) MISSED (items differ: "
                      "90 vs 100); probe at flex vs standard 0.50x (<= 0.55) met"),
    (0.5, 100, 0.7, 1, "goals: QA batch per 1,000 items vs standard online 0.50x (<= 0.55) met; "
                       "probe at flex vs standard 0.70x (<= 0.55) MISSED"),
])
def test_a_missed_goal_exits_1_and_the_last_line_says_which(monkeypatch, capsys, batch_cost, batch_items, flex_cost,
                                                           code, last):
    bench = _bench()
    for name in ("GEMINI_API_KEY", "GEMINI_BASE_URL"):  # the bench points them at its simulator
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(bench, "load_rows", lambda path, rows, side: [{}] * rows)

    async def tokens(*args):
        return 100.0, 10.0, 0.001

    def qa_run(out, rows, **settings):
        return (batch_items, batch_cost) if settings.get("qa_mode") == "batch" else (100, 1.0)

    async def probe_cost(out, rows, tier):
        return 10, flex_cost if tier == "flex" else 1.0

    monkeypatch.setattr(bench, "_tokens_per_request", tokens)
    monkeypatch.setattr(bench, "qa_run", qa_run)
    monkeypatch.setattr(bench, "probe_cost", probe_cost)
    assert bench.main(["--rows", "4", "--sample", "1"]) == code
    assert capsys.readouterr().out.splitlines()[-1] == last


@pytest.mark.slow
def test_a_small_real_run_meets_its_goals(capsys, monkeypatch):
    for name in ("GEMINI_API_KEY", "GEMINI_BASE_URL"):  # the bench points them at its simulator
        monkeypatch.delenv(name, raising=False)
    assert _bench().main(["--rows", "6", "--sample", "2", "--side", "800"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("goals: QA batch") and out[-1].count(" met") == 2
    assert any("768 px, medium" in line and "<- default" in line for line in out)
