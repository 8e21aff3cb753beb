"""vlmprobe: find where a vision-language model fails, explain why, and turn the failures into QA data.

Importing this package is cheap (no torch, transformers or google-genai): the Airflow DAG
processor imports :mod:`vlmprobe.params` at parse time.
"""

__version__ = "0.1.0"
