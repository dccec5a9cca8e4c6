"""The compiled hot path. Importing a module from here that was not built is an ImportError:
run `make compile` (or `pip install -e .`). There is deliberately no pure-Python fallback."""
