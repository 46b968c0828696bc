# Two user commands: `make demo` (the main job) and `make test` (the tests).
# Both create or refresh .venv themselves and register its Jupyter kernel as "qat".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qat-installed
export QAT_KERNEL := qat

.PHONY: demo test venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name qat --display-name "Python (qat)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

# The tour, in minutes: notebooks 01-05 trained small (reports/smoke/), then notebooks 04 and 05
# on the committed cpu records and reports/README.md from them (nothing trained). The full
# instrument: `qat instrument`, `qat demonstration` (hours); `qat report` runs 01-05 at cpu.
demo: $(STAMP)
	$(BIN)/qat report --tour

# Tests run tiny ("smoke" profile) and write their data, caches and records under
# .test-output/, never into reports/.
TEST_OUT := $(CURDIR)/.test-output
test: $(STAMP)
	$(BIN)/ruff check qat tests scripts notebooks
	$(BIN)/ruff format --check qat tests scripts notebooks
	rm -rf $(TEST_OUT)/reports $(TEST_OUT)/cache  # records and networks are built afresh
	QAT_PROFILE=smoke QAT_REPORTS=$(TEST_OUT)/reports QAT_DATA=$(TEST_OUT)/data \
	QAT_CACHE=$(TEST_OUT)/cache $(BIN)/pytest tests notebooks --nbval-lax -p no:cacheprovider --durations=15
