"""The load generator of `qactl traffic`: questions in, latencies and outcomes out (UI-free)."""
