"""llm-consumer: questions-pending -> LLM -> success / overload / quota / dead letter."""
