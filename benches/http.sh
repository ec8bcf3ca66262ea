#!/usr/bin/env bash
# token-broker against the official-SDK Node peer (../shared/bench/peers), on this machine,
# with the same wrk method: server pinned to CPU 0, wrk -t1 on CPU 1, 64 connections,
# runs interleaved (peer none, peer sqlite, broker sqlite[, broker postgres]) REPS times.
#
#   bash benches/http.sh [OUT_DIR]
#
# env: DURATION [15] seconds per run, REPS [3], CONNS [64], WARMUP [3],
#      STORES ["sqlite postgres"] broker stores to measure; add "postgres-x2" (or "sqlite-x2")
#      for the multi-instance mode: two brokers on the same database serving the same tenant,
#      both pinned to CPU 0 like the single one, two wrk (CONNS/2 each) on CPU 1, rps summed;
#      "postgres-x2t" is the same with a tenant each (two chains: what the instances would
#      write if each had a chain of its own). PEERS [../shared/bench/peers],
#      PG_URL [postgres://postgres@127.0.0.1:5432/postgres], SKIP_BUILD=1, SKIP_PEER_INSTALL=1,
#      TB [target/release/token-broker] the broker binary (another build, for A/B runs)
# Prints req/s, p50, p99 (medians), the ratios to the peer, the broker's peak RSS, the audit
# writer's rows per commit, commit time and head wait (from /metrics over each measured run), the
# fsync probe before and after, and checks that audit rows >= completed requests.
# Output: OUT_DIR/summary.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$(mktemp -d)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
DURATION=${DURATION:-15}; REPS=${REPS:-3}; CONNS=${CONNS:-64}; WARMUP=${WARMUP:-3}
STORES=${STORES:-"sqlite postgres"}
PEERS=${PEERS:-$ROOT/../shared/bench/peers}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=18080; TB_PORT=18081
API_KEY=12345678; API_SECRET=0123456789abcdef0123456789abcdef01234567
SID=1_MX4xMjM0NTY3OH5-VGh1LCAwMSBKYW4gMTk3MCAwMDowMDowMCBHTVR-MC43Nzc3Nzc3Nzc3Nzc3Nzc3fg
# The second tenant (bench2) has a video project of its own, and a session of it.
API_KEY2=87654321; API_SECRET2=fedcba9876543210fedcba9876543210fedcba98
SID2=1_MX44NzY1NDMyMX5-MTc2NDAwMDAwMDAwMH5zZXNzaW9uLTF-
RES=$OUT/results; mkdir -p "$RES"; : >"$RES/runs.jsonl"; : >"$RES/fsync.jsonl"
log() { printf '[http.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

command -v wrk >/dev/null || { log "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
for t in node npm taskset curl python3; do command -v $t >/dev/null || { log "missing $t"; exit 1; }; done

if [ -z "${SKIP_BUILD:-}" ]; then log "cargo build --release"; (cd "$ROOT" && cargo build --release --locked -q); fi
TB=${TB:-$ROOT/target/release/token-broker}  # TB: another build, for A/B runs

PEER=$OUT/peer
if [ -z "${SKIP_PEER_INSTALL:-}" ]; then
  log "installing the peer (npm) into $PEER"
  SKIP_GEN=1 SKIP_HTTP=1 bash "$PEERS/run.sh" "$PEER" >"$RES/peer-install.log" 2>&1 || true
fi
[ -d "$PEER/node_modules/opentok" ] || { log "peer install failed: see $RES/peer-install.log"; exit 1; }

SRV=""; SRV2=""
stop() {
  for p in $SRV $SRV2; do if kill -0 "$p" 2>/dev/null; then kill "$p"; wait "$p" 2>/dev/null || true; fi; done
  SRV=""; SRV2=""
}
trap stop EXIT INT TERM
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; log "server on $1 did not start"; return 1; }
fsync_probe() { node "$PEER/fsync-probe.js" 500 "$OUT/probe.tmp" | sed "s/^{/{\"when\":\"$1\",/" | tee -a "$RES/fsync.jsonl" >&2; }

# --- broker stores --------------------------------------------------------------
setup_broker() { # $1 = store name; prints the API key
  local dir=$OUT/broker-$1 url
  rm -rf "$dir"; mkdir -p "$dir"
  if [ "$1" = sqlite ]; then url="sqlite://$dir/tb.db"
  else
    psql "$PG_URL" -qc "drop database if exists tb_bench with (force)" >/dev/null
    psql "$PG_URL" -qc "create database tb_bench" >/dev/null
    url="${PG_URL%/*}/tb_bench"
  fi
  echo "$url" >"$dir/url"
  # The secret lives in the tenant's own namespace: <data_dir>/secrets/bench/.
  mkdir -p "$dir/secrets/bench"; chmod 700 "$dir/secrets" "$dir/secrets/bench"
  printf '%s' "$API_SECRET" >"$dir/secrets/bench/api_secret"; chmod 600 "$dir/secrets/bench/api_secret"
  cat >"$dir/bench.toml" <<TOML
tenant = "bench"
[[credentials]]
name = "main"
provider = "opentok"
api_key = "$API_KEY"
api_secret = "file:api_secret"
token_format = "jwt"
[defaults]
role = "publisher"
ttl = "1h"
[[rules]]
id = "everyone"
priority = 10
subjects = ["*"]
sessions = ["*"]
roles = ["subscriber", "publisher"]
max_ttl = "1h"
TOML
  export TOKEN_BROKER_DATABASE_URL=$url TOKEN_BROKER_DATA_DIR=$dir TOKEN_BROKER_LOG=warn
  "$TB" tenant create bench >/dev/null
  "$TB" policy apply "$dir/bench.toml" >/dev/null
  "$TB" key create --tenant bench --scope issue --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' >"$dir/key"
  mkdir -p "$dir/secrets/bench2"; chmod 700 "$dir/secrets/bench2"
  printf '%s' "$API_SECRET2" >"$dir/secrets/bench2/api_secret"; chmod 600 "$dir/secrets/bench2/api_secret"
  sed -e 's/^tenant = "bench"/tenant = "bench2"/' -e "s/$API_KEY/$API_KEY2/" "$dir/bench.toml" >"$dir/bench2.toml"
  "$TB" tenant create bench2 >/dev/null
  "$TB" policy apply "$dir/bench2.toml" >/dev/null
  "$TB" key create --tenant bench2 --scope issue --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' >"$dir/key2"
}
for s in $STORES; do case $s in *-x2|*-x2t) ;; *) setup_broker "$s";; esac; done
for s in $STORES; do case $s in *-x2|*-x2t) [ -d "$OUT/broker-${s%-x2*}" ] || setup_broker "${s%-x2*}"; ln -sfn "$OUT/broker-${s%-x2*}" "$OUT/broker-$s";; esac; done

start() { # variant -> sets SRV and the port
  case $1 in
    peer-none|peer-sqlite)
      rm -f "$OUT"/peer-audit.db*
      (cd "$PEER" && AUDIT=${1#peer-} AUDIT_PATH=$OUT/peer-audit.db TOKEN_FORMAT=jwt PORT=$PORT exec taskset -c 0 node server.js) >"$RES/server-$1.log" 2>&1 &
      SRV=$!; wait_up $PORT ;;
    broker-*)
      local s=${1#broker-} dir=$OUT/broker-${1#broker-}
      TOKEN_BROKER_DATABASE_URL=$(cat "$dir/url") TOKEN_BROKER_DATA_DIR=$dir TOKEN_BROKER_LOG=warn \
        TOKEN_BROKER_LISTEN=127.0.0.1:$TB_PORT taskset -c 0 "$TB" serve >"$RES/server-$1.log" 2>&1 &
      SRV=$!; wait_up $TB_PORT
      if [ "${s%-x2*}" != "$s" ]; then # a second instance on the same database
        TOKEN_BROKER_DATABASE_URL=$(cat "$dir/url") TOKEN_BROKER_DATA_DIR=$dir TOKEN_BROKER_LOG=warn \
          TOKEN_BROKER_LISTEN=127.0.0.1:$((TB_PORT + 1)) taskset -c 0 "$TB" serve >"$RES/server-$1-b.log" 2>&1 &
        SRV2=$!; wait_up $((TB_PORT + 1))
      fi ;;
  esac
}

# The brokers' audit writer figures (summed over the instances on the given ports), as JSON:
# commits, rows, commit seconds and head-wait seconds so far (docs/operations.md).
audit_figures() {
  for p in "$@"; do curl -s "http://127.0.0.1:$p/metrics"; done | python3 -c '
import json, sys
want = {"token_broker_audit_commit_duration_seconds_count": "commits", "token_broker_audit_batch_rows_sum": "rows",
        "token_broker_audit_commit_duration_seconds_sum": "commit_s", "token_broker_audit_head_wait_seconds_sum": "head_wait_s"}
out = dict.fromkeys(want.values(), 0.0)
for l in sys.stdin:
    k, _, v = l.rpartition(" ")
    if k in want:
        out[want[k]] += float(v)
print(json.dumps(out))'
}

run_wrk() { # variant rep
  local port=$PORT script=$PEERS/post.lua
  case $1 in broker-*) port=$TB_PORT; script=$ROOT/benches/tokens.lua; export TB_KEY; TB_KEY=$(cat "$OUT/broker-${1#broker-}/key");; esac
  if [ -n "$SRV2" ]; then # two instances: half the connections on each, at the same time
    local half=$((CONNS / 2)) key2=$TB_KEY sid2=$SID
    case $1 in *-x2t) key2=$(cat "$OUT/$1/key2"); sid2=$SID2;; esac # a tenant each
    SESSION_ID=$SID taskset -c 1 wrk -t1 -c"$half" -d"${WARMUP}s" --timeout 10s -s "$script" "http://127.0.0.1:$port" >/dev/null &
    local w0=$!
    TB_KEY=$key2 SESSION_ID=$sid2 taskset -c 1 wrk -t1 -c"$half" -d"${WARMUP}s" --timeout 10s -s "$script" "http://127.0.0.1:$((port + 1))" >/dev/null
    wait $w0 || true
    audit_figures "$port" $((port + 1)) >"$RES/audit-$1-$2-before.json"
    SESSION_ID=$SID taskset -c 1 wrk -t1 -c"$half" -d"${DURATION}s" --timeout 10s --latency -s "$script" "http://127.0.0.1:$port" >"$RES/wrk-$1-$2.txt" &
    local w1=$!
    TB_KEY=$key2 SESSION_ID=$sid2 taskset -c 1 wrk -t1 -c"$half" -d"${DURATION}s" --timeout 10s --latency -s "$script" "http://127.0.0.1:$((port + 1))" >"$RES/wrk-$1-$2-b.txt"
    wait $w1
    audit_figures "$port" $((port + 1)) >"$RES/audit-$1-$2-after.json"
  else
    SESSION_ID=$SID taskset -c 1 wrk -t1 -c"$CONNS" -d"${WARMUP}s" --timeout 10s -s "$script" "http://127.0.0.1:$port" >/dev/null
    case $1 in broker-*) audit_figures "$port" >"$RES/audit-$1-$2-before.json";; esac
    SESSION_ID=$SID taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency -s "$script" "http://127.0.0.1:$port" >"$RES/wrk-$1-$2.txt"
    case $1 in broker-*) audit_figures "$port" >"$RES/audit-$1-$2-after.json";; esac
  fi
  local rss=0
  for p in $SRV $SRV2; do [ -r "/proc/$p/status" ] && rss=$((rss + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done
  python3 - "$1" "$2" "$rss" "$RES/audit-$1-$2" "$RES/wrk-$1-$2.txt" "$RES/wrk-$1-$2-b.txt" >>"$RES/runs.jsonl" <<'PY'
import json, os, sys
variant, rep, rss, audit, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
rs = [json.loads(next(l for l in open(p) if l.startswith("WRKJSON "))[8:]) for p in paths if os.path.exists(p)]
r = rs[0]
for o in rs[1:]:  # two instances: throughput and errors add up, latency is the worse of the two
    for k in ("rps", "requests", "non2xx"):
        r[k] += o[k]
    for k in ("p50_us", "p99_us"):
        r[k] = max(r[k], o[k])
r.update(variant=variant, rep=rep, instances=len(rs), peak_rss_kib=rss or None)
if os.path.exists(audit + "-after.json"):  # the audit writer over the measured run
    a, b = (json.load(open(audit + w)) for w in ("-before.json", "-after.json"))
    d = {k: b[k] - a[k] for k in b}
    if d["commits"] > 0:
        r.update(rows_per_commit=d["rows"] / d["commits"], commit_ms=1e3 * d["commit_s"] / d["commits"],
                 head_wait_ms=1e3 * d["head_wait_s"] / d["commits"])
print(json.dumps(r))
PY
  log "  $1 rep $2: $(tail -1 "$RES/runs.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f req/s, p50 %.1f ms, p99 %.1f ms, non2xx %d" % (r["rps"], r["p50_us"]/1000, r["p99_us"]/1000, r["non2xx"]))')"
}

fsync_probe "before"
VARIANTS="peer-none peer-sqlite"; for s in $STORES; do VARIANTS+=" broker-$s"; done
for rep in $(seq "$REPS"); do
  for v in $VARIANTS; do
    start "$v"; run_wrk "$v" "$rep"; stop
  done
done
fsync_probe "after"

# Audit rows vs completed requests for the broker (every 2xx has a row; in-flight extras are fine).
for s in $STORES; do
  case $s in *-x2|*-x2t) continue;; esac  # same database as the single instance: verified there
  dir=$OUT/broker-$s
  for t in bench bench2; do
    TOKEN_BROKER_LOG=error TOKEN_BROKER_DATABASE_URL=$(cat "$dir/url") "$TB" audit verify --tenant $t --json >"$RES/chain-$s-$t.json" || true
  done
  python3 - "$RES/chain-$s" >"$RES/verify-$s.json" <<'PY' # both tenants' chains: ok and rows together
import json, sys
vs = [json.load(open(sys.argv[1] + "-" + t + ".json")) for t in ("bench", "bench2")]
print(json.dumps({"ok": all(v["ok"] for v in vs), "rows": sum(v["rows"] for v in vs)}))
PY
done

python3 - "$RES" "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys, os
res, out = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in open(os.path.join(res, "runs.jsonl"))]
fs = [json.loads(l) for l in open(os.path.join(res, "fsync.jsonl"))]
by = {}
for r in runs: by.setdefault(r["variant"], []).append(r)
med = lambda xs: statistics.median(xs)
print("| variant | req/s (median) | runs | p50 ms | p99 ms | non-2xx | peak RSS MiB |")
print("|---|---:|---|---:|---:|---:|---:|")
m = {}
for v, rs in by.items():
    rps = med([r["rps"] for r in rs]); m[v] = rps
    rss = [r["peak_rss_kib"] for r in rs if r.get("peak_rss_kib")]
    runs = ", ".join("{:,.0f}".format(r["rps"]) for r in rs)
    p50 = med([r["p50_us"] for r in rs]) / 1000
    p99 = med([r["p99_us"] for r in rs]) / 1000
    bad = sum(r["non2xx"] for r in rs)
    rss_txt = "{:.1f}".format(max(rss) / 1024) if rss else "-"
    print("| {} | {:,.0f} | {} | {:.1f} | {:.1f} | {} | {} |".format(v, rps, runs, p50, p99, bad, rss_txt))
print()
for v in m:
    if v.startswith("broker"):
        print("- {}: {:.1f}x peer-none, {:.1f}x peer-sqlite".format(v, m[v] / m["peer-none"], m[v] / m["peer-sqlite"]))
w = {v: rs for v, rs in by.items() if any("commit_ms" in r for r in rs)}
if w:  # the audit writer, from the brokers' /metrics over each measured run
    print()
    print("| variant | rows per commit | commit ms | of which head wait ms |")
    print("|---|---:|---:|---:|")
    for v, rs in w.items():
        rs = [r for r in rs if "commit_ms" in r]
        print("| {} | {:.1f} | {:.2f} | {:.2f} |".format(v, med([r["rows_per_commit"] for r in rs]),
              med([r["commit_ms"] for r in rs]), med([r["head_wait_ms"] for r in rs])))
    print()
for s in os.listdir(res):
    if s.startswith("verify-"):
        try:
            v = json.load(open(os.path.join(res, s)))
            store = s[7:-5]
            done = sum(r["requests"] for x in ("", "-x2", "-x2t") for r in by.get("broker-" + store + x, []))
            ok = "holds" if v["rows"] >= done else "FAILS"
            print("- {} audit chain: ok={}, rows={} >= completed measured requests {}: {}".format(store, v["ok"], v["rows"], done, ok))
        except Exception as e:
            print("- {}: unreadable ({})".format(s, e))
print("- fsync probe: " + "; ".join("{}: p50 {} us, p99 {} us".format(f["when"], f["p50_us"], f["p99_us"]) for f in fs))
PY
