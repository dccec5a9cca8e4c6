"""The request validation policy (routes[].validate): see policy.py."""
