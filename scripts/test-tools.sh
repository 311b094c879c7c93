#!/usr/bin/env bash
# Installs (once, cached outside the clone) what some tests drive from outside Rust: the
# official OpenAI Python SDK in a virtualenv, and the Portkey gateway from npm. Prints the
# variables the tests read.
set -euo pipefail
TOOLS="${NEUROPIA_TOOLS_DIR:-$HOME/.cache/neuropia}"
PORTKEY_VERSION=1.15.2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi
mkdir -p "$TOOLS"
if ! "$TOOLS/venv/bin/python" -c "import openai" >/dev/null 2>&1; then
  echo "installing the OpenAI Python SDK into $TOOLS/venv" >&2
  python3 -m venv "$TOOLS/venv" >&2
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check openai >&2
fi
server="$TOOLS/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
if [ ! -f "$server" ]; then
  echo "installing @portkey-ai/gateway@$PORTKEY_VERSION into $TOOLS/portkey" >&2
  mkdir -p "$TOOLS/portkey"
  (cd "$TOOLS/portkey" && npm install --no-audit --no-fund --silent "@portkey-ai/gateway@$PORTKEY_VERSION" >&2)
fi
echo "export NEUROPIA_TEST_PYTHON=$TOOLS/venv/bin/python"
echo "export NEUROPIA_TEST_PORTKEY=$server"
