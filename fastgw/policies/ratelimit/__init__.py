"""The traffic policy: plans of rate, quota and concurrency limits (README "Traffic policy"). The route
policy is fastgw/policies/ratelimit/policy.py."""
