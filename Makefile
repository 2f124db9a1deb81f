# Two commands a user needs: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch is installed on its own line, pinned, before the package: the pin selects the CPU
# wheel; letting a dependency resolve torch would pull several GB of CUDA packages. The ray
# extra (ray[data], pinned) comes too, because the test suite runs the Ray engine; a plain
# `pip install searchpipe` leaves it out.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/searchpipe run configs/demo.yaml
	HF_HUB_OFFLINE=1 $(BIN)/searchpipe query sample -k 3 \
		"Why does chopping onions make you cry?" \
		"How do honeybees tell each other where the flowers are?" \
		"Why do planes leave white lines in the sky?"

# lint first (seconds), then the suite: style, format, the layer contract (import-linter:
# layers, no import circles, nothing imports the CLI), types, tests
test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check searchpipe tests benchmarks
	$(BIN)/ruff format --check searchpipe tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy searchpipe

clean:
	rm -rf $(VENV) runs indexes/*/
