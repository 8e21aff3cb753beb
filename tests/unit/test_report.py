"""The run report on fabricated nights: what publish writes, what it shows, how it fails, the previous
night it compares with, the CLI's report/compare/trend, and the report's link in Airflow."""

from __future__ import annotations

import logging
import re

import pyarrow.parquet as pq
import pytest

from vlmprobe import cli
from vlmprobe.config import PublishConfig, SampleConfig
from vlmprobe.contracts import Manifest, QACounts, ShardPlan
from vlmprobe.io import JsonlWriter, RunLayout, exists, list_files, read_json
from vlmprobe.publish.run import publish
from vlmprobe.report.data import NO_SOURCE, collect, optional, thumbnail
from vlmprobe.report.link import report_url
from vlmprobe.report.render import build_context, environment
from vlmprobe.report.runs import completed_run_dates, previous_run_date, run_layout
from vlmprobe.sample.run import sample_keys
from vlmprobe.sample.shards import iter_shard_records
from fakes import fake_qa_stats, fake_success

RUN_DATE = "2026-11-25"
SECTIONS = ("glance", "failures", "qa", "teacher", "time", "compare")
ANSWER_TYPES = ("yes_no", "multiple_choice", "open")


def _night(out: str, parquet: str, run_date: str, per_key: dict[str, int], *, missing_image: bool = False,
           publish_it: bool = True) -> RunLayout:
    """A night as the steps leave it: probe failures pointing at real parquet rows (with their ``source``),
    the real sample_keys, QA items (two per failure, the target check on) and publish."""
    lay = RunLayout(out, run_date)
    files = list_files(parquet, ".parquet")
    sources = {f: pq.read_table(f, columns=["source"]).column("source").to_pylist() for f in files}
    records = []
    for key, n in per_key.items():
        for i in range(n):
            uri, row = files[i % len(files)], 3 + i % 5
            records.append({"id": f"{run_date}-{key}-{i}", "failure_key": key, "image": {"uri": uri, "row": row},
                            "question": f"What about {key} #{i}?", "answer": "red", "prediction": "blue",
                            "factor": {"category": key.split(":")[0], "value": key.split(":")[1],
                                       "completion": f"the model misread {key}"},
                            "meta": {"source": sources[uri][row]}})
    if missing_image:  # the most frequent key's first record points past the end of its file
        records[0]["image"]["row"] = 9999
    with JsonlWriter(lay.probe_rank(0)) as w:
        for rec in records:
            w.write(rec)
    fake_success(lay, [lay.probe_rank(0)], verified=len(records), input_files=files)
    sample_keys(SampleConfig(output_uri=out, run_date=run_date, samples_per_key=3, num_shards=2))
    plan = ShardPlan.read(lay.shard_plan)
    for s in plan.shards:
        n = 0
        with JsonlWriter(lay.qa_shard(s.shard_index)) as w:
            for rec in iter_shard_records(plan, s.shard_index):
                for j in range(2):
                    w.write({"id": f"{rec['id']}-{j}", "failure_id": rec["id"], "failure_key": rec["failure_key"],
                             "question": "q", "answer": "yes", "answer_type": ANSWER_TYPES[(n + j) % 3],
                             "image": rec["image"], "target_correct": j == 0})
                n += 1
        fake_qa_stats(lay, s.shard_index, QACounts(
            failures=n, failures_with_items=n, errors=0, items=2 * n, items_generated=2 * n, items_dropped=0,
            items_checked=2 * n, items_target_failed=n, items_dropped_target_passed=0, items_check_errors=0,
            resumed=0), checked=True)
    if publish_it:
        publish(PublishConfig(output_uri=out, run_date=run_date))
    return lay


@pytest.fixture
def night(tmp_path, demo_parquet) -> RunLayout:
    return _night(str(tmp_path), demo_parquet, RUN_DATE, {"color:red": 6, "count:circle": 3, "shape:star": 1},
                  missing_image=True)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _no_outside_reference(html: str) -> list[str]:
    """Every src/href/url() in the page that is not a data: URI or an in-page #anchor."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def test_publish_writes_a_self_contained_report_next_to_the_manifest(night):
    m = read_json(night.manifest)
    assert m["report"]["uri"] == night.report and exists(night.report)
    html = _read(night.report)
    assert m["report"]["size_bytes"] == len(html.encode()) and m["report"]["compared_with"] is None
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    # nothing fetched: a CSP that forbids it, no script, no reference outside the file
    assert "default-src 'none'" in html and "<script" not in html and _no_outside_reference(html) == []
    plots = re.findall(r'<svg role="img" aria-label="([\w-]+)"', html)
    assert {"funnel", "by-category", "by-source", "top-keys", "qa-items", "target-accuracy", "teacher-requests",
            "teacher-tokens", "probe-time", "qa-shards"} <= set(plots)
    assert len(plots) == len(set(plots))  # one id prefix per plot: no clash between them
    # the top key's examples: question, truth, the target's answer, the factor, a thumbnail
    assert "What about color:red #1?" in html and "the model misread color:red" in html
    assert html.count('src="data:image/jpeg;base64,') == m["report"]["thumbnails"] == 3 + 3 + 1 - 1
    assert "image unavailable" in html  # the record whose row is gone: a placeholder, not a failure
    assert "synthetic-shapes:" in html  # failures by input source


def test_the_report_counts_what_the_steps_counted(night):
    data = collect(night, Manifest.read(night.manifest))
    assert data.per_key == {"color:red": 6, "count:circle": 3, "shape:star": 1}
    assert data.per_category == {"color": 6, "count": 3, "shape": 1}
    assert sum(data.failures_by_source.values()) == 10 and NO_SOURCE not in data.failures_by_source
    assert sum(data.rows_by_source.values()) == 48  # the input files' source column: every row
    assert sum(data.qa_by_key_type.values()) == Manifest.read(night.manifest).qa.counts["items"]
    checked, failed = data.qa_target_by_key["color:red"]
    assert checked == 2 * 3 and failed == 3  # 3 sampled failures, 2 items each, one of them right
    assert [ex.thumbnail is None for ex in data.examples["color:red"]] == [True, False, False]


def test_a_report_that_fails_to_render_is_a_warning_and_report_null(tmp_path, demo_parquet, monkeypatch, caplog):
    def broken(*_args, **_kw):
        raise RuntimeError("matplotlib is having a bad day")

    monkeypatch.setattr("vlmprobe.report.render.collect", broken)
    with caplog.at_level(logging.WARNING, logger="vlmprobe.report"):
        lay = _night(str(tmp_path), demo_parquet, RUN_DATE, {"color:red": 2})
    m = read_json(lay.manifest)
    assert "report" in m and m["report"] is None and not exists(lay.report)  # the run is published all the same
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "matplotlib is having a bad day" in warning.getMessage() and "report: null" in warning.getMessage()
    assert f"vlmprobe report {lay.root}" in warning.getMessage()


def test_a_publish_rerun_removes_the_old_report_first(night):
    night.invalidate("qa", shard_index=0)
    assert not exists(night.report) and not exists(night.manifest)


def test_the_report_compares_with_the_latest_earlier_completed_night(tmp_path, demo_parquet):
    out = str(tmp_path)
    _night(out, demo_parquet, "2026-11-20", {"color:red": 1})
    _night(out, demo_parquet, "2026-11-22", {"color:red": 2, "count:circle": 6})
    _night(out, demo_parquet, "2026-11-24", {"color:red": 9}, publish_it=False)  # not completed
    lay = _night(out, demo_parquet, RUN_DATE, {"color:red": 8, "shape:star": 2})
    _night(out, demo_parquet, "2026-11-26", {"color:red": 3})  # later: never "previous"
    (tmp_path / "not-a-night").mkdir()
    assert completed_run_dates(out) == ["2026-11-20", "2026-11-22", RUN_DATE, "2026-11-26"]
    assert previous_run_date(out, RUN_DATE) == "2026-11-22" and previous_run_date(out, "2026-11-20") is None
    assert read_json(lay.manifest)["report"]["compared_with"] == "2026-11-22"
    data = collect(lay, Manifest.read(lay.manifest))
    kinds = {c.key: c.change for c in data.comparison.keys}
    assert kinds == {"color:red": "grew", "count:circle": "vanished", "shape:star": "appeared"}
    html = _read(lay.report)
    assert "Against <strong>2026-11-22</strong>" in html and 'aria-label="compare-keys"' in html


def test_figures_a_newer_manifest_adds_show_and_absent_ones_say_not_recorded(night):
    data = collect(night, Manifest.read(night.manifest))
    env = environment()
    html = env.get_template("report.html.j2").render(**build_context(data))
    glance = html.split('<section id="glance">')[1].split("</section>")[0]
    assert "what limited the night</dt><dd>not recorded" in glance and "plan is not recorded" in glance
    assert glance.count("not recorded") >= 3  # explained and unexplained too
    data.figures = {**data.figures, "limited_by": "daily_quota",
                    "plan": {"rows": 10, "explain_budget": 40},
                    "probe": {**data.figures["probe"], "counts": {**data.figures["probe"]["counts"], "explained": 7,
                                                                  "unexplained": 3}}}
    html = env.get_template("report.html.j2").render(**build_context(data))
    glance = html.split('<section id="glance">')[1].split("</section>")[0]
    assert "what limited the night</dt><dd>daily_quota" in glance
    assert re.search(r"<td>explain_budget</td><td class=\"n\">40</td><td class=\"n\">7</td>", glance)
    assert re.search(r"<td>rows</td><td class=\"n\">10</td><td class=\"n\">15</td>", glance)  # 10 + 5 rows probed
    assert "not recorded" not in glance
    teacher = html.split('<section id="teacher">')[1].split("</section>")[0]
    assert "probe: mode / tier</dt><dd>not recorded" in teacher
    data.figures["teacher"] = {**data.figures["teacher"], "qa": {**data.figures["teacher"]["qa"], "service_tier": "flex",
                                                                 "served_tiers": {"flex": 9, "standard": 1}}}
    html = env.get_template("report.html.j2").render(**build_context(data))
    assert "qa: mode / tier</dt><dd>flex (served: flex 9, standard 1)" in html
    assert optional({"a": {"b": 0}}, "a.c", "a.b") == 0 and optional({"a": None}, "a", "b") is None


def test_thumbnails_are_small_jpeg_data_uris(demo_parquet):
    from vlmprobe.io.parquet import read_images

    uri = list_files(demo_parquet, ".parquet")[0]
    image = bytes(read_images(uri, [0])[0])
    data = thumbnail(image, px=32)
    assert data.startswith("data:image/jpeg;base64,") and len(data) < 4000
    with pytest.raises(Exception):
        thumbnail(b"not an image")


# -- the CLI -----------------------------------------------------------------------------------------

def test_cli_report_compare_and_trend(tmp_path, demo_parquet, capsys):
    out = str(tmp_path / "runs")
    # 48 failures (53 rows) each night: color:red the same, the rest moved
    a = _night(out, demo_parquet, "2026-11-24", {"color:red": 5, "count:circle": 40, "shape:star": 3})
    b = _night(out, demo_parquet, RUN_DATE, {"color:red": 5, "count:circle": 4, "size:dot": 39})

    (tmp_path / "runs" / RUN_DATE / "report.html").unlink()
    assert cli.main(["report", b.root]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == b.report and printed[1] == f"open: file://{b.report}" and exists(b.report)

    html_out = str(tmp_path / "cmp.html")
    assert cli.main(["compare", a.root, b.root + "/", "--html", html_out]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text.splitlines() if re.match(r"^(color|count|shape|size):", line)}
    assert set(rows) == {"count:circle", "shape:star", "size:dot"}  # color:red did not change
    assert "shrank" in rows["count:circle"] and "** significant" in rows["count:circle"]
    assert "vanished" in rows["shape:star"] and rows["shape:star"].endswith("noise")  # 3 → 0 of 53
    assert "appeared" in rows["size:dot"] and "** significant" in rows["size:dot"]
    assert ("failure keys: appeared 1 (1 significant), grew 0 (0 significant), shrank 1 (1 significant), "
            "vanished 1 (0 significant)") in text
    page = _read(html_out)
    assert "count:circle" in page and 'aria-label="compare-keys"' in page and _no_outside_reference(page) == []

    trend_out = str(tmp_path / "trend.html")
    assert cli.main(["trend", out, "--nights", "14", "--out", trend_out]) == 0
    assert capsys.readouterr().out.strip() == trend_out
    page = _read(trend_out)
    assert 'aria-label="trend"' in page and "11-24" in page and "11-25" in page and _no_outside_reference(page) == []
    assert cli.main(["trend", out, "--nights", "1", "--out", trend_out]) == 0
    assert "11-24" not in _read(trend_out)


@pytest.mark.parametrize("argv, says", [
    (["compare", "{out}/2026-11-24", "{out}/2026-11-25"], "2026-11-24 has no manifest.json"),
    (["report", "{out}/nightly"], "is not a run's folder"),
    (["trend", "{out}/nothing-here"], "holds no completed night"),
    (["trend", "{out}", "--nights", "0"], "--nights must be at least 1"),
])
def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, demo_parquet, capsys, argv, says):
    out = str(tmp_path)
    _night(out, demo_parquet, RUN_DATE, {"color:red": 2})
    capsys.readouterr()
    assert cli.main([a.format(out=out) for a in argv]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if f"vlmprobe {argv[0]}: error:" in ln]
    assert says in line and "Traceback" not in line


def test_run_layout_splits_a_run_folder():
    lay = run_layout("gs://bucket/nightly/2026-11-25/")
    assert (lay.output_uri, lay.run_date, lay.report) == ("gs://bucket/nightly", RUN_DATE,
                                                          "gs://bucket/nightly/2026-11-25/report.html")


# -- the link ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, env, url", [
    ("/data/runs/2026-11-25/report.html", {}, "file:///data/runs/2026-11-25/report.html"),
    ("file:///data/runs/2026-11-25/report.html", {}, "file:///data/runs/2026-11-25/report.html"),
    ("gs://my-bucket/vlm probe/2026-11-25/report.html", {},
     "https://storage.cloud.google.com/my-bucket/vlm%20probe/2026-11-25/report.html"),
    ("s3://my-bucket/nightly/2026-11-25/report.html", {"AWS_REGION": "eu-west-1"},
     "https://s3.console.aws.amazon.com/s3/object/my-bucket?region=eu-west-1&prefix=nightly%2F2026-11-25%2Freport.html"),
    ("s3://my-bucket/nightly/2026-11-25/report.html", {},
     "https://s3.console.aws.amazon.com/s3/object/my-bucket?prefix=nightly%2F2026-11-25%2Freport.html"),
    ("s3://b/n/2026-11-25/report.html", {"AWS_ENDPOINT_URL": "http://minio:9000/"},
     "http://minio:9000/b/n/2026-11-25/report.html"),
    ("gs://b/n/2026-11-25/report.html", {"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"},
     "http://127.0.0.1:9023/storage/v1/b/b/o/n%2F2026-11-25%2Freport.html?alt=media"),
    ("gs://b/n/2026-11-25/report.html", {"VLMPROBE_REPORT_BASE_URL": "https://reports.example.org/vlmprobe/"},
     "https://reports.example.org/vlmprobe/2026-11-25/report.html"),
])
def test_report_url_per_store(uri, env, url):
    assert report_url(uri, env) == url


def test_the_publish_task_links_the_report_it_returns(dag, monkeypatch):
    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import ExecutorSafeguard
    from airflow.serialization.serialized_objects import DagSerialization

    from vlmprobe.lineage import ReportLinkedPythonOperator, RunReportLink, report_linked_task

    task = dag.get_task("publish")
    assert isinstance(task, ReportLinkedPythonOperator) and task.operator_name == "@task"
    (link,) = task.operator_extra_links
    assert isinstance(link, RunReportLink) and link.get_link(task, ti_key=None) == ""  # nothing published yet
    # what the API server gets: the link's name and the XCom key the worker stores its URL under
    (serialized,) = [t for t in DagSerialization.to_dict(dag)["dag"]["tasks"] if t["__var"]["task_id"] == "publish"]
    assert serialized["__var"]["_operator_extra_links"] == {"Run report": "_link_RunReportLink"}

    monkeypatch.setattr(ExecutorSafeguard, "test_mode", True)  # execute() outside the task runner
    with DAG("links", schedule=None):
        @report_linked_task(task_id="publish")
        def published() -> dict:
            return {"manifest_uri": "/runs/2026-11-25/manifest.json", "report_uri": "/runs/2026-11-25/report.html"}

        @report_linked_task(task_id="unreported")
        def unreported() -> dict:
            return {"manifest_uri": "/runs/2026-11-25/manifest.json", "report_uri": None}

        ok, none = published().operator, unreported().operator
    assert ok.execute({})["report_uri"] == "/runs/2026-11-25/report.html"
    assert link.get_link(ok, ti_key=None) == "file:///runs/2026-11-25/report.html"
    none.execute({})
    assert link.get_link(none, ti_key=None) == ""  # no report: no button
