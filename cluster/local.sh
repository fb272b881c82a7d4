#!/usr/bin/env bash
# A single-node Ray head for local use: every port it opens (GCS, raylet, object manager, client
# server, dashboard, job API, workers) listens on 127.0.0.1 only, and every client needs its token.
#   cluster/local.sh start    # then: rrdist submit --follow -- pretrain ...
#   cluster/local.sh status
#   cluster/local.sh stop     # stops this head only (its processes are found by its own temp dir)
# Settings: RRDIST_RAY_DIR (temp dir, default /tmp/rrdist-ray), RRDIST_RAY_PORT (GCS, default 6380),
#           RRDIST_DASHBOARD_PORT (dashboard and job API, default 8265), RRDIST_AGENT_PORT (the job
#           agent, default 52365), RRDIST_CLIENT_PORT (Ray client server, default 10001),
#           RRDIST_RAY_CPUS (default: all), RRDIST_VENV (default: .venv of this checkout),
#           RAY_AUTH_TOKEN_PATH (the token file, default ~/.ray/auth_token).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${RRDIST_RAY_DIR:-/tmp/rrdist-ray}"
port="${RRDIST_RAY_PORT:-6380}"
dash="${RRDIST_DASHBOARD_PORT:-8265}"
agent="${RRDIST_AGENT_PORT:-52365}"
client="${RRDIST_CLIENT_PORT:-10001}"
venv="${RRDIST_VENV:-$(pwd)/.venv}"
bin="$venv/bin"
[ -x "$bin/ray" ] || { echo "no $venv/bin/ray: run 'bash scripts/bootstrap.sh test' (or demo) first" >&2; exit 2; }
export PATH="$bin:$PATH" RAY_USAGE_STATS_ENABLED=0  # jobs run the venv's python
# `ray start` replaces a loopback --node-ip-address with the machine's address unless Ray runs in its
# single-machine mode; this switch (named for macOS/Windows, honoured on Linux) keeps the node, and
# so every service and worker of this head and the jobs it runs, on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Token authentication: `ray start --head` in Ray 2.60 turns it on only with RAY_AUTH_MODE=token
# (or a token already in place), and never makes a token itself.
token="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
export RAY_AUTH_MODE=token
[ -n "${RAY_AUTH_TOKEN:-}" ] || export RAY_AUTH_TOKEN_PATH="$token"  # RAY_AUTH_TOKEN wins when set

case "${1:-}" in
start)
    # Refuse when a port is taken: Ray would start anyway, and `rrdist submit` would then reach
    # whatever holds the port (for example the private Ray of a running `rrdist pretrain`).
    busy=$("$bin/python" - "$port" RRDIST_RAY_PORT "$dash" RRDIST_DASHBOARD_PORT "$agent" RRDIST_AGENT_PORT \
            "$client" RRDIST_CLIENT_PORT <<'EOF'
import socket, sys
args = sys.argv[1:]
for p, name in zip(args[::2], args[1::2]):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # only a listener blocks, not TIME_WAIT
        try:
            s.bind(("127.0.0.1", int(p)))
        except OSError:
            print(f"{p} ({name})", end=", ")
EOF
)
    if [ -n "$busy" ]; then
        echo "cluster/local.sh: port ${busy%, } already in use on 127.0.0.1 (another Ray? see 'ss -ltnp'): stop it, or choose free ports with the variable named" >&2
        exit 1
    fi
    if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$token" ]; then
        # One token for this head and everything that talks to it, readable by this user only.
        mkdir -p "$(dirname "$token")"
        (umask 077 && "$bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$token")
    fi
    cpus=()
    [ -n "${RRDIST_RAY_CPUS:-}" ] && cpus=(--num-cpus "$RRDIST_RAY_CPUS")
    ray start --head --node-ip-address 127.0.0.1 --port "$port" --dashboard-host 127.0.0.1 \
        --dashboard-port "$dash" --dashboard-agent-listen-port "$agent" --ray-client-server-port "$client" \
        --temp-dir "$dir" --disable-usage-stats "${cpus[@]}" >/dev/null
    [ -n "${RAY_AUTH_TOKEN:-}" ] && token='$RAY_AUTH_TOKEN'
    echo "Ray head on 127.0.0.1:$port; dashboard and job API on http://127.0.0.1:$dash (token: $token)"
    extra=""
    [ "$token" != "$HOME/.ray/auth_token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && extra="RAY_AUTH_TOKEN_PATH=$token "
    echo "submit with: ${extra}rrdist submit --address http://127.0.0.1:$dash --follow -- pretrain ..."
    ;;
status)
    ray status --address "127.0.0.1:$port"
    ;;
stop)
    # `ray stop` would stop every Ray on this machine; stop only the processes of this head: those
    # naming its temp dir, and its Ray client server, which names only the GCS address.
    mine="$dir|--address=127\.0\.0\.1:$port( |$)"
    if pgrep -f -- "$mine" >/dev/null; then
        # Ray's Python processes end within about 2.5 s of a SIGTERM; its GCS and raylet, sent one
        # together, were still there 25 s later (Ray 2.60), so what is left after 3 s is killed.
        pkill -TERM -f -- "$mine" || true
        for _ in $(seq 6); do pgrep -f -- "$mine" >/dev/null || break; sleep 0.5; done
        # Until none is left: a process the raylet started while the others were stopping is killed too.
        for _ in $(seq 20); do
            pkill -KILL -f -- "$mine" || break
            sleep 0.25
        done
    fi
    echo "stopped the Ray head of $dir"
    ;;
*)
    echo "usage: cluster/local.sh start|status|stop" >&2
    exit 2
    ;;
esac
