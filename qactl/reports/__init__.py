"""What `qactl metrics` reports: sections read from PostgreSQL, and their PNG charts."""
