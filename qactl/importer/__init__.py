"""The import of an earlier run's response.json into PostgreSQL, the baseline of `qactl metrics`."""
