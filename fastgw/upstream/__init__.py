"""Upstream resilience outside the request path: the targets' pod-wide state (state.py)."""
