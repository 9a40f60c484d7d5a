# Every target creates .venv and installs what it needs when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint wheel clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m satchel.manager.demo $(DEMO_ARGS)

# The full suite, as CI runs it (slow cases included).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The quick loop for development: skips the long fuzz sweeps and soak tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The check-in benchmark drives the manager with wrk (a C load generator) when it is there.
bench: $(STAMP)
	command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get install -y -qq wrk >/dev/null; } || echo "wrk not installed: Python load generator"
	$(PY) -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check bundles agent manager tests bench
	rm -rf build/typecheck && mkdir -p build/typecheck/satchel
	for p in bundles agent manager migrations; do ln -s ../../../$$p build/typecheck/satchel/$$p; done
	MYPYPATH=build/typecheck $(VENV)/bin/mypy --namespace-packages --explicit-package-bases \
		-p satchel.bundles -p satchel.agent -p satchel.manager
	$(VENV)/bin/lint-imports

# The product: dist/satchel-VERSION-py3-none-any.whl (README, "Install"). A stale build/lib
# could carry deleted modules into the wheel, and a stale egg-info in the checkout would
# answer importlib.metadata for the tests: neither outlives the build.
wheel: $(STAMP)
	rm -rf build/lib build/bdist.* dist/satchel-*.whl
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build/lib build/bdist.* satchel.egg-info

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
