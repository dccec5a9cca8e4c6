"""The auth policy: IP rules, the failed-credential budget, API keys, JWT, mTLS, scopes and roles
(docs/identity.md). The route policy is fastgw/policies/auth/policy.py."""
