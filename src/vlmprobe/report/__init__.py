"""What a night found, for people: the run report, nights compared, the failure trend.

- :mod:`vlmprobe.report.render` — ``report.html`` next to a run's manifest (publish writes it;
  ``vlmprobe report RUN_URI`` makes it again);
- :mod:`vlmprobe.report.compare` — ``vlmprobe compare RUN_A RUN_B``: failure keys that appeared,
  grew, shrank or vanished, with a significance test (:mod:`vlmprobe.report.stats`);
- :mod:`vlmprobe.report.trend` — ``vlmprobe trend OUTPUT_URI``: failure rate per category over nights;
- :mod:`vlmprobe.report.link` — the report's URL for a browser (the publish task's extra link).

Importing this package is cheap; matplotlib and Jinja2 load when a page is rendered.
"""
