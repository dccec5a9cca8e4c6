"""Stores shared by every instance of the gateway (Redis)."""
