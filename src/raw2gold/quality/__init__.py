"""Data quality checks on processed tables and staged gold."""
