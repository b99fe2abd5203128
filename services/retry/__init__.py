"""retry-overload and retry-quota: error-typed, non-blocking, durable retries via delay topics."""
