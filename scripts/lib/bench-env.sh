# Sourced by the benchmark scripts: builds the release binary, starts the loopback mock
# upstream and a gateway on a fresh database, and prepares a funded user with a key.
# Leaves: BIN, GW (URL), GW_PID, MOCK_PID, GWS (every instance's URL), PGURL, DB, MOCK_PORT, ADMIN, USER_ID, TOKEN, KEY, work (temp dir),
# and the helpers ticks, TICK_US and paid_lua.
set -euo pipefail
MOCK_PORT="${MOCK_PORT:-19001}"
GW_PORT="${GW_PORT:-13001}"
DB="${DB:-neuropia_bench}"
PGURL="postgres://postgres@127.0.0.1:5432"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neuropia/target}"

scripts/services.sh >/dev/null
command -v jq >/dev/null || { echo "jq is needed: apt-get install -y jq" >&2; exit 1; }
# BENCH_BIN runs another build of the gateway (an older commit's, to compare).
if [ -n "${BENCH_BIN:-}" ]; then
  BIN="$BENCH_BIN"
else
  cargo build --release --locked -q ${BENCH_BUILD_ARGS:-}
  BIN="$CARGO_TARGET_DIR/release/neuropia"
fi
GW="http://127.0.0.1:$GW_PORT"

work=$(mktemp -d)
pids=()
# The benchmarks' gateway caches in its own Redis database, emptied at the end, so that
# thousands of bench keys do not linger in the one the tests and the demo use.
BENCH_REDIS_DB="${BENCH_REDIS_DB:-15}"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -n "$BENCH_REDIS_DB" FLUSHDB >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null
"$BIN" mock-upstream --bind "127.0.0.1:$MOCK_PORT" >"$work/mock.log" 2>&1 &
pids+=($!); MOCK_PID=$!
# INSTANCES=n (default 1) starts n gateways over the same database and Redis, on
# GW_PORT, GW_PORT+1, ...; GWS lists their URLs (comma-separated), GW is the first.
INSTANCES="${INSTANCES:-1}"
GWS=""
for i in $(seq 0 $((INSTANCES - 1))); do
  port=$((GW_PORT + i))
  RUST_LOG=warn DATABASE_URL="$PGURL/$DB" NEUROPIA_BIND="127.0.0.1:$port" NEUROPIA_ALLOW_PRIVATE_UPSTREAMS=1 \
    REDIS_URL="redis://127.0.0.1:6379/$BENCH_REDIS_DB" NEUROPIA_INSTANCES="$INSTANCES" \
    JWT_SECRET=bench-secret-0123456789 NEUROPIA_ADMIN_EMAIL=admin@bench.local \
    NEUROPIA_ADMIN_PASSWORD=bench-password-1 env ${BENCH_GATEWAY_ENV:-} "$BIN" serve >"$work/gw$i.log" 2>&1 &
  pids+=($!); [ "$i" = 0 ] && GW_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
  GWS="${GWS:+$GWS,}http://127.0.0.1:$port"
done

api() { curl -sf -X "$1" "$GW$2" -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} ${4:+-d "$4"}; }
ADMIN=$(api POST /api/auth/login "" '{"email":"admin@bench.local","password":"bench-password-1"}' | jq -r .token)
api PUT /api/admin/model-configs "$ADMIN" "{\"model\":\"bench\",\"config\":{\"targets\":[{\"provider\":\"openai\",\"custom_host\":\"http://127.0.0.1:$MOCK_PORT/v1\",\"override_params\":{\"model\":\"bench\"}}]}}" >/dev/null
api PUT /api/admin/provider-rates "$ADMIN" '{"provider":"openai","model":"bench","input_rate":"0.000001","output_rate":"0.000002"}' >/dev/null
USER_ID=$(api POST /api/auth/register "" '{"email":"load@bench.local","password":"bench-password-1","username":"load"}' | jq -r .user_id)
api POST "/api/users/$USER_ID/topups" "$ADMIN" '{"amount":"1000000"}' >/dev/null
TOKEN=$(api POST /api/auth/login "" '{"email":"load@bench.local","password":"bench-password-1"}' | jq -r .token)
KEY=$(api POST "/api/users/$USER_ID/virtual-keys" "$TOKEN" '{"name":"bench"}' | jq -r .virtual_key)

# CPU accounting. ticks PID... -> utime + stime of these processes, in clock ticks of
# TICK_US microseconds.
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
ticks() {
  local p t=0 f
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }   # fields after the command name (which may hold spaces)
    read -r -a a <<<"$f" || true
    t=$(( t + a[11] + a[12] ))
  done
  echo "$t"
}
# paid_lua FILE -> a wrk script posting one paid chat call with $KEY.
paid_lua() {
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"bench","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-virtual-key"] = "$KEY"
LUA
}
