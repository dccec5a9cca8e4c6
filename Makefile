# fastgw developer tasks. `make run` and `make test` work on a fresh clone (they install what they need).
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: install compile run test lint bench bench-quick plots clean

.stamp-install: pyproject.toml setup.py
	$(PIP) install -q 'Cython==3.3.0' 'setuptools>=77' wheel
	$(PIP) install -q --no-build-isolation -e '.[test,dev]'
	@touch $@

install: .stamp-install

compile: .stamp-install
	$(PY) setup.py -q build_ext --inplace

run: compile
	$(PY) -m fastgw run -c config/fastgw.toml

test: compile
	$(PY) -m pytest -q

lint: .stamp-install
	$(PY) -m ruff check fastgw tests bench
	$(PY) -m mypy fastgw

bench: compile
	$(PY) bench/run.py
	$(PY) bench/bench_router.py
	$(PY) bench/memory_idle.py

bench-quick: compile
	$(PY) bench/run.py --quick

plots: .stamp-install
	$(PY) bench/plots.py

clean:
	rm -rf build fastgw/_core/*.c fastgw/_core/*.so .stamp-install
