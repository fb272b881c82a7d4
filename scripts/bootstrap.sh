#!/usr/bin/env bash
# Set up everything rrdist needs on a fresh Debian/Ubuntu machine, then run one job:
#   bash scripts/bootstrap.sh demo    # install, then the demo (pretrain + evaluate on digits)
#   bash scripts/bootstrap.sh test    # install, then the test suite
# Idempotent: a second run installs nothing and starts the job at once.
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:-demo}"
shift || true

# System packages FFCV builds against.
packages=(pkg-config libopencv-dev libturbojpeg0-dev build-essential)
# The tests also run cluster/slurm.sbatch on a one-machine SLURM (tests/test_slurm.py).
[ "$job" = test ] && packages+=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages, in a local virtual environment; reinstalled only when pyproject.toml changes.
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.rrdist-installed"
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing Python packages into .venv (torch, ray, ffcv, ...; several GB the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    # Exactly the versions the tests passed with (requirements.lock; torch and torchvision come
    # together: torchvision needs the matching build), then rrdist itself on top of them.
    .venv/bin/python -m pip install -q -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
fi

export RAY_USAGE_STATS_ENABLED=0
case "$job" in
    demo) exec .venv/bin/rrdist demo "$@" ;;
    # Two test processes (tests/conftest.py): each runs half of the modules that use the session's Ray, with
    # a local Ray of its own, and every other module goes to the free one; in one process the cores sat idle
    # about 30% of the time, waiting on Ray and SLURM.
    test) exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --durations=20 "$@" tests ;;
    *) echo "usage: bash scripts/bootstrap.sh demo|test" >&2; exit 2 ;;
esac
