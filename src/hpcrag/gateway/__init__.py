"""The OpenAI-compatible gateway: keys and budgets, the tier router, the streaming proxy."""
