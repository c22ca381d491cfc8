"""Airflow DAG file used by `raw2gold run`: one DAG per pipeline named by RAW2GOLD_PIPELINES."""

from raw2gold.orchestrate.dag_factory import load_dags

globals().update(load_dags())
