"""The run report of a small real run, opened in headless Chromium (Debian's ``chromium``, driven by
Playwright): no console error, no request outside the file, every section and plot on screen.

Two real nights (the tiny LLaVA on the CPU, the Gemini simulator on loopback) on demo data made
with different seeds, one output folder: the second night's report compares with the first, and
``vlmprobe compare`` lists the keys that changed. The full-page screenshot is kept next to the run
(its path is printed; ``VLMPROBE_REPORT_SCREENSHOT=PATH`` copies it there too).

Skipped only where ``/usr/bin/chromium`` is missing outside CI; in CI (``CI`` set) a missing
browser fails the test: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from vlmprobe import cli
from vlmprobe.config import ProbeConfig, PublishConfig, QAConfig, SampleConfig
from vlmprobe.io import RunLayout, read_json
from fakes import SIM_PLAN

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
# As root, without a GPU, on a machine whose only network is loopback: no sandbox, no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SECTIONS = {"glance": 1, "failures": 3, "qa": 2, "teacher": 2, "time": 2, "compare": 1}  # section → plots at least
NIGHTS = (("2026-11-24", 0), ("2026-11-25", 1))  # run date, demo data seed


def _browser_or_skip() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI installs it and runs this test")


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, tiny_llava) -> str:
    """Two nights run step by step in this process, as the pods and tasks run them."""
    from vlmprobe.demo.data import write_demo_parquet
    from vlmprobe.probe.run import main as probe
    from vlmprobe.publish.run import publish
    from vlmprobe.qa.run import run_shard
    from vlmprobe.sample.run import sample_keys
    from vlmprobe.sim import GeminiSimulator

    root = tmp_path_factory.mktemp("nights")
    out = str(root / "runs")
    with pytest.MonkeyPatch.context() as mp, GeminiSimulator(port=0, latency_ms=0, seed=1) as sim:
        for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
            mp.delenv(var, raising=False)
        mp.setenv("GEMINI_API_KEY", "test-key-not-secret")
        mp.setenv("GEMINI_BASE_URL", sim.base_url)
        for run_date, seed in NIGHTS:
            data = str(root / f"input-seed{seed}")
            write_demo_parquet(data, n_files=4, rows_per_file=12, seed=seed)
            probe(ProbeConfig(input_uri=data, output_uri=out, run_date=run_date, target_model=tiny_llava,
                              failure_batch_size=8, parquet_sample_size=100, concurrency=4, **SIM_PLAN))
            plan = sample_keys(SampleConfig(output_uri=out, run_date=run_date, samples_per_key=4, num_shards=2))
            for shard in plan["shards"]:
                run_shard(QAConfig(output_uri=out, run_date=run_date, shard_index=shard["shard_index"], concurrency=4,
                                   target_model=tiny_llava, qa_target_check="on"))
            publish(PublishConfig(output_uri=out, run_date=run_date))
    return out


def test_the_report_opens_in_chromium_with_nothing_fetched_and_every_section_drawn(two_nights):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    lay = RunLayout(two_nights, NIGHTS[1][0])
    report = read_json(lay.manifest)["report"]
    assert report["uri"] == lay.report and report["compared_with"] == NIGHTS[0][0] and report["thumbnails"] > 0
    page_url = Path(lay.report).as_uri()
    shot = Path(lay.root) / "report-screenshot.png"
    console, errors, outside = [], [], []

    def route(r):  # every request the page makes: only the file itself may load, anything else is refused
        url = r.request.url
        if url == page_url or url.startswith("data:"):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: outside.append(f"failed: {r.url}") if r.url not in outside else None)
            page.route("**/*", route)
            page.goto(page_url, wait_until="load")
            page.screenshot(path=str(shot), full_page=True)
            drawn = page.evaluate("""() => Array.from(document.querySelectorAll('section')).map(s => ({
                id: s.id,
                plots: Array.from(s.querySelectorAll('svg.plot')).filter(p => {
                    const b = p.getBoundingClientRect(); return b.width > 200 && b.height > 80; }).length,
                height: s.getBoundingClientRect().height}))""")
            images = page.evaluate("""() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])""")
        finally:
            browser.close()
    print(f"\nscreenshot of the report: {shot}")
    if os.environ.get("VLMPROBE_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["VLMPROBE_REPORT_SCREENSHOT"])
    assert [c for c in console if c.startswith(("error", "warning"))] == [] and errors == []
    assert outside == []
    assert {d["id"]: d["plots"] for d in drawn}.keys() == SECTIONS.keys()
    for d in drawn:
        assert d["plots"] >= SECTIONS[d["id"]], d
    assert images and all(complete and width > 0 for complete, width in images)  # every thumbnail decoded
    assert len(images) == report["thumbnails"]
    assert shot.stat().st_size > 100_000


def test_compare_on_two_demo_nights_lists_the_keys_that_changed(two_nights, capsys):
    a, b = (RunLayout(two_nights, d).root for d, _ in NIGHTS)
    assert cli.main(["compare", a, b]) == 0
    text = capsys.readouterr().out
    changed = [line for line in text.splitlines()
               if re.match(r"^\S+:\S+\s+(appeared|grew|shrank|vanished)\s", line)]
    assert changed, text
    assert all(line.endswith(("significant", "noise")) for line in changed)
