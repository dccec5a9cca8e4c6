"""The traffic policy: plans of rate, quota and concurrency limits (docs/traffic-policy.md). The route
policy is fastgw/policies/ratelimit/policy.py."""
