# Shortcuts for the scripts in scripts/ (the README's two commands work without make).
.PHONY: setup demo test lint format cluster-up cluster-down cluster-status

setup:
	scripts/setup
demo:
	scripts/demo
test:
	scripts/test
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
cluster-up:
	scripts/dev-cluster up
cluster-down:
	scripts/dev-cluster down
cluster-status:
	scripts/dev-cluster status
