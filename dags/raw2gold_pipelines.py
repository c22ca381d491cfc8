"""Airflow DAGs for raw2gold: one DAG per pipeline.yaml named by RAW2GOLD_PIPELINES
(os.pathsep-separated paths or globs; default: every examples/*/pipeline.yaml of this repo)."""

from pathlib import Path

from raw2gold.orchestrate.dag_factory import load_dags

globals().update(load_dags(default=str(Path(__file__).parents[1] / "examples/*/pipeline.yaml")))
