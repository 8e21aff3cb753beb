"""The target running out of GPU memory (issue 15), faked on the CPU: the batch is halved, the rank finishes
and counts it; at one row the step fails with one line. Other failures stay per batch."""

from __future__ import annotations

import asyncio

import pytest
import torch

from vlmprobe.config import ProbeConfig
from vlmprobe.errors import VlmprobeError
from vlmprobe.io import RunLayout, exists, iter_jsonl, read_json
from vlmprobe.probe.run import main
from fakes import SIM_PLAN

RUN_DATE = "2026-11-25"


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


class Flaky:
    """Wraps the tiny LLaVA: ``run`` raises CUDA's out-of-memory error for more than ``fits`` rows, and
    ``fail`` on the ``fail_batch``-th call; records the size of every call that reached the device."""

    def __init__(self, real, fits: int = 1024, fail_batch: int | None = None,
                 fail: type[Exception] = RuntimeError) -> None:
        self.real, self.fits, self.fail_batch, self.fail = real, fits, fail_batch, fail
        self.name, self.sizes, self.calls = real.name, [], 0

    def prepare(self, images, questions, choices, image_keys=None, **kw):
        return self.real.prepare(images, questions, choices, image_keys, **kw)

    def run(self, prepared):
        self.calls += 1
        if prepared.size > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {prepared.size} GiB")
        if self.calls == self.fail_batch:
            raise self.fail("CUDA error: an illegal memory access was encountered")
        self.sizes.append(prepared.size)
        return self.real.run(prepared)

    def answer(self, images, questions, choices):
        if len(images) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        self.sizes.append(len(images))
        return self.real.answer(images, questions, choices)


def _wrap(monkeypatch, **kw) -> list[Flaky]:
    import vlmprobe.vlm as vlm

    real_load, made = vlm.load_target, []

    def load(*a, **k):
        made.append(Flaky(real_load(*a, **k), **kw))
        return made[-1]

    monkeypatch.setattr(vlm, "load_target", load)
    return made


def _cfg(demo_parquet, out, model, **kw) -> ProbeConfig:
    kw = {"failure_batch_size": 8, "parquet_sample_size": 100, "concurrency": 4, **SIM_PLAN, **kw}
    return ProbeConfig(input_uri=demo_parquet, output_uri=str(out), run_date=RUN_DATE, target_model=model, **kw)


def test_an_out_of_memory_batch_is_halved_and_the_rank_finishes(tmp_path, tiny_llava, gemini_sim, monkeypatch,
                                                                 caplog):
    from vlmprobe.demo.data import write_demo_parquet

    write_demo_parquet(str(tmp_path / "input"), n_files=4, rows_per_file=40, seed=0)
    made = _wrap(monkeypatch, fits=4)
    cfg = _cfg(str(tmp_path / "input"), tmp_path / "out", tiny_llava, failure_batch_size=16)
    success = read_json(main(cfg)["success_uri"])
    (target,) = made
    c = success["counts"]
    assert c["rows"] == c["probed"] == 160 == c["passed"] + c["verified"] + c["rejected"] + c["errors"]
    # every row answered, none lost to the halving (the demo's two bad rows never reach the target)
    assert success["error_reasons"] == {"image_unreadable": 1, "missing_question": 1}
    # the first batch (14 rows: 16 less the bad two) -> 7 -> 3, which fits
    assert success["oom_halvings"] == success["ranks"][0]["oom_halvings"] == 2
    assert max(target.sizes) == 3 and sum(target.sizes) == 158  # each row reached the device once
    # the reader's later batches shrank too: at most 6 batches of 16 were read before the first OOM
    assert success["ranks"][0]["pipeline"]["batches"] >= 6 + (160 - 6 * 16) // 3
    assert "ran out of GPU memory on a batch of 14 rows: 7 rows per batch" in caplog.text


def test_out_of_memory_on_one_row_fails_the_step_with_one_line(tmp_path, demo_parquet, tiny_llava, gemini_sim,
                                                                monkeypatch):
    from vlmprobe.errors import exit_code_for

    _wrap(monkeypatch, fits=0)
    with pytest.raises(VlmprobeError) as caught:
        main(_cfg(demo_parquet, tmp_path, tiny_llava, failure_batch_size=4))
    line = str(caught.value)
    assert "\n" not in line and exit_code_for(caught.value) == (1, True)
    assert line.startswith("probe rank 0: the target ran out of GPU memory on a single row (batch size halved 1 "
                           "time(s) from 4 to 1)") and "a GPU with more memory" in line
    assert not exists(RunLayout(str(tmp_path), RUN_DATE).probe_success)
    assert gemini_sim.stats()["requests"] == 0  # no row was answered: nothing was explained


def test_another_failure_is_answered_one_at_a_time_for_that_batch_only(tmp_path, demo_parquet, tiny_llava,
                                                                       gemini_sim, monkeypatch):
    made = _wrap(monkeypatch, fail_batch=2)
    success = read_json(main(_cfg(demo_parquet, tmp_path, tiny_llava))["success_uri"])
    (target,) = made
    # batch 2 failed: its 8 rows were answered alone; every other batch ran whole, before and after
    # (the first holds 6: the demo's two bad rows never reach the target)
    assert target.sizes == [6] + [1] * 8 + [8] * 4
    assert success["oom_halvings"] == 0 and "target_error" not in success["error_reasons"]
    assert success["counts"]["rows"] == 48


def test_the_probe_fails_when_target_errors_exceed_max_error_rate(tmp_path, demo_parquet, tiny_llava, gemini_sim,
                                                                  monkeypatch):
    import vlmprobe.vlm as vlm

    real_load = vlm.load_target

    class Broken:
        def __init__(self, real):
            self.name = real.name

        def answer(self, images, questions, choices):
            raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(vlm, "load_target", lambda *a, **k: Broken(real_load(*a, **k)))
    with pytest.raises(VlmprobeError, match=r"the target failed on 46 of 48 rows, more than max_error_rate 10.0%"):
        main(_cfg(demo_parquet, tmp_path, tiny_llava, failure_batch_size=4))
    lay = RunLayout(str(tmp_path), RUN_DATE)
    assert not exists(lay.probe_success)
    errors = [e for e in iter_jsonl(lay.probe_errors(0)) if e["reason"] == "target_error"]
    assert len(errors) == 46 and all("device-side assert" in e["detail"] for e in errors)
    assert exists(lay.probe_journal)  # kept: a rerun probes the failed rows again


# -- the QA target check -----------------------------------------------------------------------------

class CheckTarget:
    """Answers every QA item with "red"; out of memory above ``fits`` items, fails on any item asking "boom"."""

    def __init__(self, fits: int = 1024) -> None:
        self.fits, self.sizes = fits, []

    def answer(self, images, questions, choices):
        if len(images) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if any("boom" in q for q in questions):
            raise RuntimeError("the target failed")
        self.sizes.append(len(images))
        return ["red"] * len(images)


def _check(target, failures: int, batch_items: int, boom: int | None = None):
    from vlmprobe.qa.target_check import TargetCheck

    async def go():
        check = TargetCheck(target, batch_items=batch_items)
        try:
            for seq in range(failures):
                check.submit(seq, object(), [{"question": "boom?" if seq == boom else "Color?", "answer": "red",
                                              "choices": []} for _ in range(3)])
            await check.finish()
        finally:
            check.close()
        return check

    return asyncio.run(go())


def test_the_qa_target_check_halves_its_batch_when_memory_runs_out():
    target = CheckTarget(fits=4)
    check = _check(target, failures=10, batch_items=16)
    assert len(check.results) == 30 and all(a is not None and a.correct for a in check.results.values())
    assert check.oom_halvings == 2 and check.batch_items == 4  # 16 -> 8 -> 4, for the later batches too
    assert max(target.sizes) == 4 and sum(target.sizes) == 30


def test_the_qa_target_check_asks_a_failed_batch_one_at_a_time_and_fails_at_one_item():
    target = CheckTarget()
    check = _check(target, failures=4, batch_items=6, boom=1)
    assert [check.results[(1, j)] for j in range(3)] == [None, None, None]  # the bad items: unknown answers
    assert sum(a is not None for a in check.results.values()) == 9 and check.oom_halvings == 0
    assert target.sizes == [1, 1, 1] + [6]  # the failed batch alone, one at a time; the next one whole
    with pytest.raises(VlmprobeError, match=r"^qa target check: the target ran out of GPU memory on a single row"):
        _check(CheckTarget(fits=0), failures=2, batch_items=4)
