"""The built-in LLM: Ollama- and OpenAI-compatible, deterministic, with fault injection."""
