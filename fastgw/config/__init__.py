"""The config file: one TOML file, validated before use (docs/configuration.md).

The root and loading are in fastgw/config/root.py (`load`, `loads`, `Config`, `ConfigError`); each
section's schema and checks are in the module of what it configures. This package module imports
nothing: the policies' sections import fastgw.config.schema, so a root imported here would make every
policy import itself back through the policy registry.
"""
