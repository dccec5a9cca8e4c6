"""Route policies: what runs between routing and the upstream.

Each policy is a package: its config (schema and checks, fastgw/policies/NAME/config.py, which imports no
compiled code so that `fastgw check` works before a build), its logic, and the registration of what it
owns. fastgw/policies/chain.py builds a route's gate from them; fastgw/policies/contract.py has the types
a policy answers with.
"""
