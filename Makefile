# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup setup-test demo test lint typecheck unit fakepeer integration e2e bench clean

setup:
	@scripts/setup.sh

## The tests also check explain's source lines (the kernel's debug info, ~260 MB),
## record on a second kernel family (6.12), on QEMU 10 (on Debian 12 from
## bookworm-backports, unpacked, never installed) and with a Linux L2 (Debian's arm64
## QEMU in L1, ~90 MB initramfs): fetched once and cached.
setup-test:
	@scripts/setup.sh --debug-info --extra-kernel 6.12 --newer-qemu --linux-l2

## The main job on the built-in defaults: record the default scenario, print the summary.
demo: setup
	$(VENV)/tracekit record -o out/demo.pftrace

## Everything: lint, type check, then every test tier (unit, fakepeer, integration, e2e).
test: setup-test lint typecheck
	$(VENV)/pytest -m "unit or fakepeer or integration or e2e" tests

lint:
	$(VENV)/ruff check tracekit tests
	$(VENV)/ruff format --check tracekit tests

typecheck:
	$(VENV)/mypy

unit:
	$(VENV)/pytest -m unit tests

## The recorder's stop handling and fault paths against fake peers (tests/fakepeer).
fakepeer:
	$(VENV)/pytest -m fakepeer tests

integration:
	$(VENV)/pytest -m integration tests

e2e:
	$(VENV)/pytest -m e2e tests

## Tracing overhead and export throughput (prints a table; docs/performance.md keeps it).
bench: setup
	$(VENV)/tracekit bench

clean:
	rm -rf .venv build .pytest_cache .mypy_cache .ruff_cache
