"""The problems of any pipeline.yaml named by RAW2GOLD_PIPELINES, shown by Airflow as this file's
import error ("Broken DAG"). It defines no DAG: raw2gold_pipelines.py keeps the DAGs of the valid
pipelines, which one failing import there would drop all together."""

from pathlib import Path

from raw2gold.orchestrate.dag_factory import raise_config_problems

raise_config_problems(default=str(Path(__file__).parents[1] / "examples/*/pipeline.yaml"))
