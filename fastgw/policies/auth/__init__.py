"""The auth policy: IP rules, the failed-credential budget, API keys, JWT, mTLS, scopes and roles
(README "Identity and TLS"). The route policy is fastgw/policies/auth/policy.py."""
