#!/usr/bin/env bash
# A single-node Ray head for local use: every port it opens (GCS, raylet, object manager, client
# server, dashboard, job API, workers) listens on 127.0.0.1 only.
#   cluster/local.sh start    # then: rrdist submit --follow -- pretrain ...
#   cluster/local.sh status
#   cluster/local.sh stop     # stops this head only (its processes are found by its own temp dir)
# Settings: RRDIST_RAY_DIR (temp dir, default /tmp/rrdist-ray), RRDIST_RAY_PORT (GCS, default 6380),
#           RRDIST_DASHBOARD_PORT (default 8265), RRDIST_AGENT_PORT (the job agent, default 52365),
#           RRDIST_RAY_CPUS (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${RRDIST_RAY_DIR:-/tmp/rrdist-ray}"
port="${RRDIST_RAY_PORT:-6380}"
dash="${RRDIST_DASHBOARD_PORT:-8265}"
agent="${RRDIST_AGENT_PORT:-52365}"
bin="$(pwd)/.venv/bin"
[ -x "$bin/ray" ] || { echo "no .venv: run 'bash scripts/bootstrap.sh test' (or demo) first" >&2; exit 2; }
export PATH="$bin:$PATH" RAY_USAGE_STATS_ENABLED=0  # jobs run the venv's python
# `ray start` replaces a loopback --node-ip-address with the machine's address unless Ray runs in its
# single-machine mode; this switch (named for macOS/Windows, honoured on Linux) keeps the node, and
# so every service and worker of this head and the jobs it runs, on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

case "${1:-}" in
start)
    cpus=()
    [ -n "${RRDIST_RAY_CPUS:-}" ] && cpus=(--num-cpus "$RRDIST_RAY_CPUS")
    ray start --head --node-ip-address 127.0.0.1 --port "$port" --dashboard-host 127.0.0.1 \
        --dashboard-port "$dash" --dashboard-agent-listen-port "$agent" --temp-dir "$dir" \
        --disable-usage-stats "${cpus[@]}" >/dev/null
    echo "Ray head on 127.0.0.1:$port; dashboard and job API on http://127.0.0.1:$dash"
    echo "submit with: RAY_AUTH_MODE=token rrdist submit --address http://127.0.0.1:$dash --follow -- pretrain ..."
    ;;
status)
    ray status --address "127.0.0.1:$port"
    ;;
stop)
    # `ray stop` would stop every Ray on this machine; stop only the processes of this head.
    if pgrep -f -- "$dir" >/dev/null; then
        pkill -TERM -f -- "$dir" || true
        for _ in $(seq 20); do pgrep -f -- "$dir" >/dev/null || break; sleep 0.5; done
        pkill -KILL -f -- "$dir" || true
    fi
    echo "stopped the Ray head of $dir"
    ;;
*)
    echo "usage: cluster/local.sh start|status|stop" >&2
    exit 2
    ;;
esac
