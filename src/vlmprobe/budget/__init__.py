"""A night planned from its budget: how many wrong answers the teacher explains, and which.

- :mod:`vlmprobe.budget.plan` — the night's plan, computed by rank 0 of the probe before the
  first Gemini request from the rows to probe, the expected error rate, what is left of the
  project's daily quota, the per-minute quota over the GPU pass, and the cost cap: the
  ``explain_budget``, the share reserved for QA, and what limits the night (``limited_by``).
- :mod:`vlmprobe.budget.select` — which wrong answers are explained: a seeded hash of the row's
  identity under a threshold per stratum (question type x source), the same rows for any rank
  count; thresholds only go down while the night runs.
- :mod:`vlmprobe.budget.history` — what the last completed night of this deployment measured
  (error rate, verification rate, retries, tokens, images per second), the plan's priors.

Pure Python (no torch, no google-genai): the planner's arithmetic is tested on its own.
"""
