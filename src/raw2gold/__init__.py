"""raw2gold: Airbyte -> raw -> Spark processed -> gold, orchestrated by Airflow."""

__version__ = "0.1.0"
