# Two commands a user needs: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-env clean browser

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
test: lint browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# headless Chromium for the search page's browser test (tests/test_serve_browser.py), from
# Debian's packages (no browser download): installed when missing and root or password-less
# sudo is at hand; otherwise, or if apt fails, that one test skips and says why
APT_CHROMIUM = apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
browser:
	@if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		$(APT_CHROMIUM) >/dev/null || echo "make browser: apt-get could not install chromium; the browser test will skip"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo sh -c '$(APT_CHROMIUM)' >/dev/null || echo "make browser: apt-get could not install chromium; the browser test will skip"; \
	else echo "make browser: chromium is missing and there is no root or sudo to install it; the browser test will skip"; fi

lint: install
	$(BIN)/ruff check searchpipe tests benchmarks
	$(BIN)/ruff format --check searchpipe tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy searchpipe

# benchmarks/speed.py's peers (sentence-transformers' OpenVINO backend, ONNX Runtime) in their
# own venv: optimum-intel needs transformers < 5.6, tokenizers < 0.23 and huggingface-hub < 1.22,
# older than our pins, so pip cannot resolve them as an extra of ours and they never enter .venv.
# torch is held at the CPU wheel (unheld, optimum-intel would pull torch with CUDA).
BENCH_VENV := .venv-bench
BENCH_PEERS := 'optimum-intel[openvino]==2.2.0' openvino==2026.4.1 onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/pip install --quiet -e .
	echo torch==2.13.0 > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install --quiet -c $(BENCH_VENV)/constraints.txt $(BENCH_PEERS)
	# optimum-intel drags in torchvision, whose PyPI wheel is built for CUDA torch and breaks
	# `import transformers` beside the CPU wheel; datasets 5 needs a newer huggingface-hub than
	# optimum-intel allows; the benchmarks use neither (only training needs datasets)
	$(BENCH_VENV)/bin/pip uninstall --quiet -y torchvision datasets
	touch $@
bench-env: $(BENCH_VENV)/.installed

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs indexes/*/
