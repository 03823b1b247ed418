"""Trading bots: strategies as pure functions (bots.strategies) and one runner (bots.runner)."""
