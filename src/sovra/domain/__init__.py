"""Pydantic models, state machines and rules; no I/O."""
