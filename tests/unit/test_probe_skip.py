"""A probe retried after it succeeded (issue 15): skipped without a single Gemini request, unless the work
plan or the settings changed, an output is gone, or ``force`` is set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vlmprobe.config import ProbeConfig
from vlmprobe.io import RunLayout
from vlmprobe.probe.run import main
from fakes import SIM_PLAN

RUN_DATE = "2026-11-25"


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The target models loaded (a skipped probe loads none)."""
    import vlmprobe.vlm as vlm

    real, loaded = vlm.load_target, []

    def load(spec, **kw):
        loaded.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(vlm, "load_target", load)
    return loaded


def _cfg(demo_parquet, out, model, **kw) -> ProbeConfig:
    kw = {"failure_batch_size": 8, "parquet_sample_size": 2, "concurrency": 4, **SIM_PLAN, **kw}
    return ProbeConfig(input_uri=demo_parquet, output_uri=str(out), run_date=RUN_DATE, target_model=model, **kw)


def test_a_successful_probe_retried_sends_no_gemini_request(tmp_path, demo_parquet, tiny_llava, gemini_sim, loads,
                                                            caplog):
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava)
    first = main(cfg)
    paid = gemini_sim.stats()["requests"]
    lay = RunLayout(str(tmp_path), RUN_DATE)
    success = Path(lay.probe_success).read_bytes()
    assert paid > 0 and loads == [tiny_llava]
    outputs = {p: Path(p).read_bytes() for p in (lay.probe_rank(0), lay.probe_errors(0))}

    again = main(cfg)  # e.g. the task retried after its pod succeeded
    assert again == first
    assert gemini_sim.stats()["requests"] == paid  # not a single request
    assert loads == [tiny_llava]  # nor the target loaded
    assert Path(lay.probe_success).read_bytes() == success
    assert {p: Path(p).read_bytes() for p in outputs} == outputs
    assert "probe already succeeded for this work plan and these settings" in caplog.text

    forced = main(_cfg(demo_parquet, tmp_path, tiny_llava, force=True))
    assert gemini_sim.stats()["requests"] > paid and len(loads) == 2
    assert forced["counts"]["rows"] == first["counts"]["rows"]


@pytest.mark.parametrize("change", ["settings", "plan", "output gone"])
def test_a_changed_probe_or_a_lost_output_runs_again(tmp_path, demo_parquet, tiny_llava, gemini_sim, loads, change,
                                                     caplog):
    caplog.set_level(logging.INFO, logger="vlmprobe")
    cfg = _cfg(demo_parquet, tmp_path, tiny_llava)
    main(cfg)
    paid = gemini_sim.stats()["requests"]
    lay = RunLayout(str(tmp_path), RUN_DATE)
    if change == "settings":
        cfg = _cfg(demo_parquet, tmp_path, tiny_llava, max_new_tokens=9)  # in the resume fingerprint
        why = "other settings"
    elif change == "plan":
        cfg = _cfg(demo_parquet, tmp_path, tiny_llava, parquet_sample_size=1)  # other input files
        why = "another work plan"
    else:
        os.remove(lay.probe_rank(0))
        why = "output file(s) are gone"
    result = main(cfg)
    assert len(loads) == 2 and gemini_sim.stats()["requests"] > paid
    assert "exists but the probe runs again: " in caplog.text and why in caplog.text
    assert Path(lay.probe_rank(0)).exists() and result["counts"]["rows"] > 0


def test_a_success_from_before_the_skip_existed_is_not_trusted(tmp_path, demo_parquet, tiny_llava, gemini_sim,
                                                               loads):
    from vlmprobe.contracts import ProbeSuccess

    cfg = _cfg(demo_parquet, tmp_path, tiny_llava)
    main(cfg)
    lay = RunLayout(str(tmp_path), RUN_DATE)
    old = ProbeSuccess.read(lay.probe_success)
    old.work_plan_sha256 = old.fingerprint = None  # written by an older vlmprobe: no plan, no fingerprint
    old.write(lay.probe_success)
    main(cfg)
    assert len(loads) == 2
    assert ProbeSuccess.read(lay.probe_success).work_plan_sha256  # the new one has them
