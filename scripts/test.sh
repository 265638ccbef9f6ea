#!/usr/bin/env bash
# Run the whole test suite: bash scripts/test.sh [pytest args...]
#
# Works from a fresh Debian machine (as root, or with passwordless sudo) and in CI
# (CI=true, no stdin): installs the Debian packages the tests need when missing,
# keeps a virtualenv in .venv with the project and its dev extra, then runs
# ruff, mypy, import-linter and pytest. Exits non-zero if any of them fails;
# pytest's own exit code wins when pytest fails.
#
# The tests start their own PostgreSQL and Dovecot instances on random loopback
# ports (tests/services); the system instances the packages come with are not used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PYTHONDONTWRITEBYTECODE=1

log() { printf '\n==> %s\n' "$*" >&2; }

# --- Debian packages ----------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

pick_python() {
    local py
    for py in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$py" ] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

missing=()
have_initdb=false
for f in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$f" ]; then have_initdb=true; fi
done
$have_initdb || missing+=(postgresql)
{ [ -x /usr/sbin/dovecot ] && pkg_installed dovecot-imapd; } || missing+=(dovecot-imapd)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
PY=$(pick_python || true)
if [ -z "$PY" ]; then
    missing+=(python3 python3-venv)
elif ! [ -x .venv/bin/python ] && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]} (and no apt-get to install them)" >&2
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    apt_opts=(-q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    if ! as_root apt-get "${apt_opts[@]}" update -qq \
        || ! as_root apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"
    then
        echo "could not install ${missing[*]}: run as root or install them yourself" >&2
        exit 1
    fi
    # The packages start system-wide postgresql/dovecot services where they can;
    # the tests run their own private instances, so stop these.
    for svc in postgresql dovecot; do
        as_root service "$svc" stop >/dev/null 2>&1 || true
    done
    PY=$(pick_python || true)
    if [ -z "$PY" ]; then
        echo "no Python >= 3.11 found (set PYTHON=/path/to/python3.11+)" >&2
        exit 1
    fi
fi

# --- virtualenv -----------------------------------------------------------------------

VENV=$REPO_ROOT/.venv
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }; then
    log "creating $VENV with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

# Reinstall only when the dependency declaration changed (or after a failed install).
stamp=$VENV/.helpdesk-installed
want=$( { cat pyproject.toml; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    log "installing the project with its dev extra into .venv"
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" >"$stamp"
fi

export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV=$VENV

# --- checks ---------------------------------------------------------------------------

failed=()

log "ruff check ."
ruff check . || failed+=(ruff)

log "mypy"
mypy || failed+=(mypy)

log "lint-imports"
lint-imports || failed+=(lint-imports)

log "pytest -q $*"
set +e
python -m pytest -q "$@"
rc=$?
set -e

if [ "$rc" -ne 0 ]; then
    [ "${#failed[@]}" -eq 0 ] || echo "also failed: ${failed[*]}" >&2
    echo "pytest failed (exit code $rc)" >&2
    exit "$rc"
fi
if [ "${#failed[@]}" -gt 0 ]; then
    echo "tests passed, but these checks failed: ${failed[*]}" >&2
    exit 1
fi
echo "all checks and tests passed" >&2
