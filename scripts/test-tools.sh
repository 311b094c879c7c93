#!/usr/bin/env bash
# Installs (once, cached outside the clone) what some tests drive from outside Rust: the
# official OpenAI and Anthropic Python SDKs in a virtualenv, the OpenAI Node SDK,
# playwright-core (driving Debian's Chromium) and the Portkey gateway from npm. Prints the
# variables the tests read.
set -euo pipefail
TOOLS="${NEUROPIA_TOOLS_DIR:-$HOME/.cache/neuropia}"
PORTKEY_VERSION=1.15.2
OPENAI_NODE_VERSION=7.59.0
PLAYWRIGHT_VERSION=1.65.1
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The console's browser tests drive Debian's Chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi
mkdir -p "$TOOLS"
# Fetched once (PyPI, npm) and kept in $TOOLS: the first run needs the network.
fail() { echo "scripts/test: $1 (it is fetched once, on the first run, and needs the network)" >&2; exit 1; }
if ! "$TOOLS/venv/bin/python" -c "import openai, anthropic, openapi_spec_validator" >/dev/null 2>&1; then
  echo "installing the OpenAI and Anthropic Python SDKs and openapi-spec-validator into $TOOLS/venv" >&2
  python3 -m venv "$TOOLS/venv" >&2 || fail "could not make a Python virtualenv in $TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check openai anthropic openapi-spec-validator \
    >"$TOOLS/pip.log" 2>&1 || fail "could not install the Python SDKs from PyPI (see $TOOLS/pip.log)"
fi
server="$TOOLS/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
if [ ! -f "$server" ]; then
  echo "installing @portkey-ai/gateway@$PORTKEY_VERSION into $TOOLS/portkey" >&2
  mkdir -p "$TOOLS/portkey"
  (cd "$TOOLS/portkey" && npm install --no-audit --no-fund --silent "@portkey-ai/gateway@$PORTKEY_VERSION" \
    >"$TOOLS/npm.log" 2>&1) || fail "could not install the Portkey gateway from npm (see $TOOLS/npm.log)"
fi
node_sdk="$TOOLS/node-sdk/node_modules/openai"
if [ ! -f "$node_sdk/package.json" ]; then
  echo "installing the OpenAI Node SDK (openai@$OPENAI_NODE_VERSION) into $TOOLS/node-sdk" >&2
  mkdir -p "$TOOLS/node-sdk"
  (cd "$TOOLS/node-sdk" && npm install --no-audit --no-fund --silent "openai@$OPENAI_NODE_VERSION" \
    >"$TOOLS/npm-sdk.log" 2>&1) || fail "could not install the OpenAI Node SDK from npm (see $TOOLS/npm-sdk.log)"
fi
playwright="$TOOLS/playwright/node_modules/playwright-core"
if [ ! -f "$playwright/package.json" ]; then
  echo "installing playwright-core@$PLAYWRIGHT_VERSION into $TOOLS/playwright" >&2
  mkdir -p "$TOOLS/playwright"
  (cd "$TOOLS/playwright" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION" \
    >"$TOOLS/npm-playwright.log" 2>&1) || fail "could not install playwright-core from npm (see $TOOLS/npm-playwright.log)"
fi
echo "export NEUROPIA_TEST_PYTHON=$TOOLS/venv/bin/python"
echo "export NEUROPIA_TEST_PLAYWRIGHT=$playwright"
echo "export NEUROPIA_TEST_CHROMIUM=$(command -v chromium)"
echo "export NEUROPIA_TEST_OPENAI_NODE=$node_sdk"
echo "export NEUROPIA_TEST_PORTKEY=$server"
