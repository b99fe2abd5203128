"""The persister: terminal outcomes from Kafka into PostgreSQL and the Redis cache, each written once."""
