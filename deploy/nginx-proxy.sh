#!/usr/bin/env bash
# nginx as a local gRPC load balancer over ragloom replicas, for the scale-out test and the load
# benchmark (tests/integration/test_replicas.py, benchmarks/load.py --replicas) and for trying
# two replicas by hand. Uses deploy/nginx.conf.template.
#
#   deploy/nginx-proxy.sh install                      nginx from Debian's packages, if missing
#   deploy/nginx-proxy.sh check                        exit 0 when nginx can run the template
#   deploy/nginx-proxy.sh run DIR PORT HOST:PORT...    serve on PORT in the foreground, DIR as prefix
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
template="$here/nginx.conf.template"

nginx_bin() {
    command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

case "${1:-}" in
install)
    if [ -n "$(nginx_bin)" ]; then
        echo "nginx already installed: $("$(nginx_bin)" -v 2>&1)"
        exit 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "installing nginx needs root (apt-get install nginx)" >&2
        exit 1
    fi
    # the package would start a system nginx on port 80; this script runs its own instead
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends nginx >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends nginx >/dev/null
    }
    echo "installed: $("$(nginx_bin)" -v 2>&1)"
    ;;
check)
    bin="$(nginx_bin)"
    [ -n "$bin" ] || { echo "nginx is not installed: run deploy/nginx-proxy.sh install"; exit 1; }
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' EXIT
    LISTEN_PORT=8080 UPSTREAMS="server 127.0.0.1:50051;" envsubst '${LISTEN_PORT} ${UPSTREAMS}' \
        < "$template" > "$dir/nginx.conf"
    "$bin" -t -q -p "$dir" -e stderr -c "$dir/nginx.conf"
    ;;
run)
    [ $# -ge 4 ] || { echo "usage: $0 run DIR PORT HOST:PORT..." >&2; exit 2; }
    dir="$2"; port="$3"; shift 3
    bin="$(nginx_bin)"
    [ -n "$bin" ] || { echo "nginx is not installed: run $0 install" >&2; exit 1; }
    mkdir -p "$dir"
    upstreams=""
    for u in "$@"; do
        # a replica that refuses connections is skipped for 5 s, then tried again
        upstreams+="server $u max_fails=1 fail_timeout=5s; "
    done
    LISTEN_PORT="$port" UPSTREAMS="$upstreams" envsubst '${LISTEN_PORT} ${UPSTREAMS}' \
        < "$template" > "$dir/nginx.conf"
    exec "$bin" -p "$dir" -e stderr -c "$dir/nginx.conf" -g 'daemon off;'
    ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
