"""Shared fixtures: the parsed DAG, demo data, the tiny LLaVA and the Gemini simulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/podrender.py

# Airflow state for tests lives in a throwaway home, never in ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".pytest_cache" / "airflow-home"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture(scope="session")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "vlm_failure_pipeline.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["vlm_failure_pipeline"]


@pytest.fixture(scope="session")
def demo_parquet(tmp_path_factory) -> str:
    from vlmprobe.demo.data import write_demo_parquet

    out = tmp_path_factory.mktemp("demo") / "parquet"
    write_demo_parquet(str(out), n_files=4, rows_per_file=12, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> str:
    from vlmprobe.demo.data import build_tiny_llava

    return build_tiny_llava(str(tmp_path_factory.mktemp("model") / "tiny-llava"))


@pytest.fixture(scope="session")
def answering_llava(tiny_llava, tmp_path_factory) -> str:
    """The tiny LLaVA after a few seconds of training: it answers with one word, often an option."""
    import shutil

    from vlmprobe.demo.data import train_tiny_llava

    out = tmp_path_factory.mktemp("answering") / "tiny-llava"
    shutil.copytree(tiny_llava, out)
    return train_tiny_llava(str(out))


@pytest.fixture
def gemini_sim(monkeypatch):
    """A Gemini simulator on loopback, with the client's env pointed at it."""
    from vlmprobe.sim import GeminiSimulator

    with GeminiSimulator(port=0, latency_ms=0, seed=1) as sim:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-secret")
        monkeypatch.setenv("GEMINI_BASE_URL", sim.base_url)
        yield sim
