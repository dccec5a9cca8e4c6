# fastgw developer tasks. `make run` and `make test` work on a fresh clone (they install what they need).
# `make run` installs the runtime dependencies only; `make test` adds the test and dev tools.
PY ?= python3
PIP ?= $(PY) -m pip --disable-pip-version-check
# The runtime dependencies, read from pyproject.toml so that they are declared once.
RUNTIME_DEPS = $(shell $(PY) -c "import tomllib; print(' '.join(repr(d) for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")
BUILD_DEPS = 'Cython==3.3.0' 'setuptools>=77' wheel

.PHONY: install install-runtime compile run test lint bench bench-quick plots clean

# Runtime: what `fastgw run` imports, and what compiles the core. pip shows what it downloads.
.stamp-runtime: pyproject.toml setup.py
	@echo "fastgw: [1/2] installing the runtime dependencies and Cython (about 30 s on a fresh venv)"
	$(PIP) install --progress-bar on $(BUILD_DEPS) $(RUNTIME_DEPS)
	@touch $@

# Tests and development: the package itself (editable, for the `fastgw` command) with its test and dev
# extras (pytest, hypothesis, grpcio, ruff, mypy, py-spy: a few hundred MB). The core is not compiled
# here (FASTGW_SKIP_CORE, see setup.py): `compile` builds it in place.
.stamp-install: .stamp-runtime
	@echo "fastgw: installing the package (editable) with its test and dev tools (about 2 minutes)"
	FASTGW_SKIP_CORE=1 $(PIP) install --progress-bar on --no-build-isolation -e '.[test,dev]'
	@touch $@

install-runtime: .stamp-runtime

install: .stamp-install

compile: .stamp-runtime
	@echo "fastgw: [2/2] compiling the Cython core in place"
	$(PY) setup.py -q build_ext --inplace -j 2

run: compile
	$(PY) -m fastgw run -c config/fastgw.toml

test: .stamp-install compile
	$(PY) -m pytest -q --durations=15

lint: .stamp-install
	$(PY) -m ruff check fastgw tests bench
	$(PY) -m mypy fastgw

bench: .stamp-install compile
	$(PY) bench/run.py
	$(PY) bench/bench_router.py
	$(PY) bench/memory_idle.py

# A harness check: its figures go to bench/results/quick-*, never over the committed latest-* ones.
bench-quick: .stamp-install compile
	$(PY) bench/run.py --quick

plots: .stamp-install
	$(PY) bench/plots.py

clean:
	rm -rf build fastgw/_core/*.c fastgw/_core/*.so .stamp-install .stamp-runtime
