"""DAG factory, operators, notifiers and the local Airflow control used by the CLI."""
