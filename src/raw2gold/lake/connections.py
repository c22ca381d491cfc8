"""Credentials from Airflow connections (the only place secrets live besides the environment)."""

from __future__ import annotations


def aws_connection_credentials(
    conn_id: str, endpoint: str | None
) -> tuple[str | None, str | None, str | None, str | None]:
    """Access key, secret key, session token and endpoint of an Airflow `aws` connection."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    extra = conn.extra_dejson
    endpoint = endpoint or extra.get("endpoint_url")
    return conn.login, conn.password, extra.get("aws_session_token"), endpoint
