"""The storage API: accepts questions over HTTP (202 at once) and answers from the cache or PostgreSQL."""
