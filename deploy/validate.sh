#!/usr/bin/env bash
# Validate the deployment artifacts offline: no cluster, no Docker engine, no Envoy binary needed.
#   bash deploy/validate.sh        (or: make deploy-validate)
# What is checked, and how, is tests/unit/test_deploy.py (also part of `make test`); this script
# installs what that needs, runs it with CI=true (a missing tool fails instead of skipping), and,
# where kubectl happens to be installed, cross-checks the kustomization with the real kustomize.
# Idempotent: later runs install nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python

# 1. The Python tools, pinned in pyproject.toml's dev extra, in the project's virtual environment
#    (the Makefile's install step; it does nothing when .venv is up to date).
make --no-print-directory -s .venv/.installed
# a .venv made before the pins were added or changed: install just those, at their pinned versions
mapfile -t pins < <("$PY" - <<'EOF'
import re, tomllib
from importlib.metadata import PackageNotFoundError, version
dev = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
for name in ("kubernetes-validate", "envoy-data-plane", "dockerfile", "jsonpatch"):
    (pin,) = [d for d in dev if re.fullmatch(rf"{name}==[\w.]+", d)]
    try:
        if version(name) == pin.split("==")[1]:
            continue
    except PackageNotFoundError:
        pass
    print(pin)
EOF
)
if [ "${#pins[@]}" -gt 0 ]; then
    echo "== installing ${pins[*]}"
    "$PY" -m pip install -q "${pins[@]}"
fi

# 2. nginx, for `nginx -t` (Debian's package; nginx-light has the gRPC and HTTP/2 modules)
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing nginx-light (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
    else
        echo "nginx not found: install it (Debian/Ubuntu: sudo apt-get install -y nginx-light), then rerun" >&2
        exit 1
    fi
fi

# 3. The checks themselves
CI=true "$PY" -m pytest tests/unit/test_deploy.py -v -p no:cacheprovider

# 4. Optional: the real kustomize (built into kubectl) must render what the test rendered, and
#    that too must pass the schemas (kubectl kustomize needs no cluster)
if command -v kubectl >/dev/null; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp -r deploy/k8s "$scratch/k8s"
    printf 'components:\n  - components/pod-tls\n' >> "$scratch/k8s/kustomization.yaml"
    kubectl kustomize deploy/k8s > "$scratch/base.yaml"
    kubectl kustomize "$scratch/k8s" > "$scratch/pod-tls.yaml"
    "$PY" -m kubernetes_validate --strict --quiet "$scratch/base.yaml" "$scratch/pod-tls.yaml"
    echo "kubectl kustomize: deploy/k8s renders (with and without components/pod-tls) and passes the schemas"
else
    echo "kubectl not found: skipped the cross-check with the real kustomize (the test renders the kustomization itself)"
fi
echo "deploy/: all checks passed"
