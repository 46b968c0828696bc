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

demo: $(STAMP)
	$(BIN)/qat report

test: $(STAMP)
	$(BIN)/ruff check qat tests
	$(BIN)/ruff format --check qat tests
	QAT_PROFILE=smoke $(BIN)/pytest tests notebooks --nbval-lax -p no:cacheprovider
