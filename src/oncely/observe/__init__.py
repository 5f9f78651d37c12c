"""Observability: the engine's event stream and what subscribes to it."""
