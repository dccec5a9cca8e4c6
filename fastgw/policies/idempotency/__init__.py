"""The Idempotency-Key policy (routes[].idempotency): see policy.py."""
