# Two entry points: `make demo` and `make test`. Both create .venv and install on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install text-data clean bench-cpu

# Offline English text of the `english-mix` corpus (binattn/train/corpus.py): WordNet 3.0 and the
# fortune files, as Debian packages. Installed once with apt-get (root, or through sudo).
TEXT_DATA := /usr/share/wordnet/data.noun /usr/share/games/fortunes/fortunes \
             /usr/share/games/fortunes/food
TEXT_PKGS := wordnet-base fortunes fortunes-min

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) text-data

text-data:
	@for f in $(TEXT_DATA); do test -f $$f || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "install $(TEXT_PKGS) (Debian names): WordNet" \
	    "3.0 and fortune-mod's files are needed by --data english-mix" >&2; exit 1; }; \
	  sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    $$sudo apt-get install -y -q --no-install-recommends $(TEXT_PKGS); \
	fi

demo: install
	$(BIN)/binattn demo

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

bench-cpu: install
	$(BIN)/python benchmarks/cpu_attention.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
