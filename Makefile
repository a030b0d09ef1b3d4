# llmlab: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup browser run test bench gpu-check soak lint docs-reference clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install llmlab with its dev tools, the chat page (Gradio) and the W&B sink

# torch is pinned here, not in pyproject: an unpinned torch pulls several GB of CUDA wheels on CPU machines.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,chat,wandb]"
	touch $(STAMP)

# Debian's chromium and its driver (apt, as root or through sudo) and selenium: the chat page's browser test
browser: $(STAMP)  ## install a headless browser (chromium, chromium-driver, selenium) for the browser test
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }
	$(BIN)/pip install -q -e ".[browser]"

run: $(STAMP)  ## train the default model (tiny, Llama style) on the embedded synthetic language
	$(BIN)/python -m llmlab.run

test: $(STAMP)  ## run the whole test suite
	$(BIN)/python -m pytest

# monitors: small model, batch 8 (a step of ~0.6 s on 2 CPU cores), about a quarter of an hour
BENCH_ARGS ?= --model small --batch-size 8 --steps 300

bench: $(STAMP)  ## every speed benchmark, each side by side in one process; JSON under bench/
	$(BIN)/python -m llmlab.bench vs-transformers
	$(BIN)/python -m llmlab.bench vs-transformers --arch gpt2 --out bench/vs_transformers_gpt2.json
	$(BIN)/python -m llmlab.bench vs-transformers --reference --sizes tiny small --out bench/vs_reference.json
	$(BIN)/python -m llmlab.bench vs-transformers --reference --arch gpt2 --sizes tiny --out bench/vs_reference_gpt2.json
	$(BIN)/python -m llmlab.bench fused
	$(BIN)/python -m llmlab.bench compile-pays --cache-dir bench/.cache
	$(BIN)/python -m llmlab.bench compile-pays --cache-dir bench/.cache --out bench/compile_pays_warm.json
	$(BIN)/python -m llmlab.bench generation
	$(BIN)/python -m llmlab.bench data
	$(BIN)/python -m llmlab.bench scaling
	$(BIN)/python -m llmlab.bench monitors $(BENCH_ARGS)
	$(BIN)/python -m llmlab.bench moe
	$(BIN)/python -m llmlab.bench circuits
	$(BIN)/python -m llmlab.bench circuits --model small --batch-size 8 --out bench/circuits_small.json

gpu-check: $(STAMP)  ## on one CUDA GPU (about 8 minutes): bf16 steps vs transformers, MFU, DDP, generation; bench/gpu.json
	$(BIN)/python -m llmlab.bench gpu

soak: $(STAMP)  ## a long monitored run whose memory must stay flat, written to bench/soak.json
	$(BIN)/python -m llmlab.bench soak

lint: $(STAMP)  ## ruff check, then the architecture contracts (import-linter, in pyproject.toml)
	$(BIN)/ruff check llmlab tests
	$(BIN)/lint-imports

docs-reference: $(STAMP)  ## write docs/reference/ again from the schemas' docstrings and conf/ (after a config change)
	$(BIN)/python -m llmlab.docs

clean:  ## remove caches (never outputs/)
	rm -rf .pytest_cache .ruff_cache .import_linter_cache
