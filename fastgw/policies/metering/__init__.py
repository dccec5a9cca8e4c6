"""Usage metering: what each consumer used, per route and minute (fastgw/policies/metering/policy.py)."""
