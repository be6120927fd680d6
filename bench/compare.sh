#!/usr/bin/env bash
# bench/compare.sh — Ordo's throughput and latency over a local 3-broker
# cluster, and (with PEERS set) NATS' over a 3-node cluster in the same go,
# same topology (1 publisher on broker A; one subscriber on each of A, B, C),
# same payload size, same rate definitions (peers/broker-bench); prints the ratios.
#
#   bench/compare.sh [ORDERING...]            default: fifo
#
# Environment:
#   RUNS (3)        runs per measurement; median [min–max] are reported
#   SECS (10)       seconds per run (after the warm-up)
#   SIZE (128)      payload bytes
#   RATE (10000)    msg/s of the latency runs
#   WARMUP (1)      seconds of warm-up of the latency runs (not measured)
#   WINDOW (10000)  throughput runs: messages the publisher keeps ahead of its
#                   slowest subscriber (as broker-bench's tput window)
#   PEERS           path to the peer harness (read-only is fine), e.g. ../shared/peers
#   PEERS_OUT       writable folder for its build and results (default: $OUT/peers)
#   OUT             where logs and JSON go (default: target/bench-results/<UTC time>)
#   BROKER_ARGS     extra flags for every ordo-broker
#   SKIP_BUILD=1    use the release binaries as they are
#   LAT_ROUNDS (0)  with PEERS: also N interleaved rounds of Ordo / NATS 3-node /
#                   raw UDP latency runs (bench/latency.sh) and their p99 ratio
#   QUIET_PCT (8), QUIET_WAIT (90), MAX_OTHER (15): as the peer harness, wait for
#                   a quiet machine before each run and redo runs during which
#                   other processes used more than MAX_OTHER % of one core
#
# The brokers listen on loopback only, on a multicast group and cluster name of
# their own (TTL 0), and are stopped by PID on exit. Numbers are disturbed by
# other processes: check the load average printed with each measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-3}
SECS=${SECS:-10}
SIZE=${SIZE:-128}
RATE=${RATE:-10000}
WARMUP=${WARMUP:-1}
WINDOW=${WINDOW:-10000}
ORDERINGS=("$@")
[ ${#ORDERINGS[@]} -gt 0 ] || ORDERINGS=(fifo)
OUT=${OUT:-$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap stop_all EXIT
trap "exit 143" INT TERM

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "# building release binaries (cargo build --release -p ordo-broker -p ordo-client)"
  cargo build --release --quiet -p ordo-broker -p ordo-client
fi

# ---------------------------------------------------------------- cluster
CLUSTER="bench-$$-$(date +%s)"
GROUP="239.255.$(( ($$ % 250) + 2 )).$(( RANDOM % 250 + 2 )):$(free_port udp)"
SERVERS=()
for i in 1 2 3; do
  port=$(free_port tcp); mport=$(free_port tcp)
  # shellcheck disable=SC2086
  "$BIN/ordo-broker" --node-id "$i" --cluster "$CLUSTER" --group "$GROUP" \
    --listen "127.0.0.1:$port" --metrics "127.0.0.1:$mport" ${BROKER_ARGS:-} \
    > "$OUT/broker$i.log" 2>&1 &
  PIDS+=($!)
  SERVERS+=("127.0.0.1:$port")
done
S=$(IFS=,; echo "${SERVERS[*]}")
echo "# cluster $CLUSTER on group $GROUP, brokers $S (pids ${PIDS[*]})"
for _ in $(seq 300); do
  n=$("$BIN/ordo" --server "${SERVERS[0]}" cluster 2>/dev/null | awk '/^members/{print gsub(/incarnation/, "")}' || true)
  [ "${n:-0}" -ge 3 ] && break
  sleep 0.1
done
"$BIN/ordo" --server "${SERVERS[0]}" cluster | tee "$OUT/cluster.txt"

# ---------------------------------------------------------------- helpers
stat3() { # key files... -> "median [min–max]" of a JSON number over the files
  python3 - "$@" <<'EOF'
import json, sys
key, files = sys.argv[1], sys.argv[2:]
v = sorted(json.load(open(f))[key] for f in files)
n = len(v)
med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
print(f"{med:.0f} [{v[0]:.0f}–{v[-1]:.0f}]")
EOF
}
med() { # key files... -> median only
  python3 - "$@" <<'EOF'
import json, sys
key, files = sys.argv[1], sys.argv[2:]
v = sorted(json.load(open(f))[key] for f in files)
n = len(v)
print(v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2)
EOF
}
sum_key() { # key files... -> sum
  python3 - "$@" <<'EOF'
import json, sys
print(sum(json.load(open(f))[sys.argv[1]] for f in sys.argv[2:]))
EOF
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
pid_ticks() { # pids... -> summed utime+stime of the ones alive
  local p t=0 f
  for p in "$@"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') || f=0
    t=$((t + ${f:-0}))
  done
  echo "$t"
}
wait_quiet() { # as the peer harness: until others use <= QUIET_PCT % of the cpus (at most QUIET_WAIT s)
  local i a b pct
  for i in $(seq "${QUIET_WAIT:-90}"); do
    a=$(busy_ticks); sleep 1; b=$(busy_ticks)
    set -- $a $b; pct=$(( 100 * ($3 - $1) / ($4 - $2 + 1) ))
    [ "$pct" -le "${QUIET_PCT:-8}" ] && return 0
    [ $((i % 10)) = 1 ] && echo "# machine busy (${pct}% of all cpus), waiting..." >&2
  done
  echo "# WARNING: machine still busy (${pct}%) — measuring anyway" >&2
}

ordo_bench() { # name ordering extra-args... ; writes $OUT/name-N.json
  # A run during which other processes used more than MAX_OTHER % of one core
  # is discarded and redone (at most 3 x RUNS attempts), as the peer harness does.
  local name=$1 ordering=$2; shift 2
  local r=0 attempt=0 hz; hz=$(getconf CLK_TCK)
  while [ "$r" -lt "$RUNS" ] && [ "$attempt" -lt $((RUNS * 3)) ]; do
    attempt=$((attempt + 1))
    wait_quiet
    local f="$OUT/$name-$((r + 1)).json"
    echo "# $name run $((r + 1))/$RUNS (attempt $attempt), load $(load): ordo bench --servers $S --pub 1 --sub 3 --size $SIZE --ordering $ordering $*" | tee -a "$OUT/log.txt"
    local b0 o0 b1 o1 t0 t1 rc=0
    b0=$(busy_ticks); o0=$(pid_ticks "${PIDS[@]}"); t0=$(date +%s%N)
    "$BIN/ordo" bench --servers "$S" --pub 1 --sub 3 --size "$SIZE" \
        --ordering "$ordering" --topic "bench.$ordering.$name.$attempt" --json "$@" > "$f.tmp" 2>> "$OUT/log.txt" || rc=$?
    b1=$(busy_ticks); o1=$(pid_ticks "${PIDS[@]}"); t1=$(date +%s%N)
    # Nothing samples the bench while it runs (every sample starts a few
    # processes, which showed as stalls in the latency tail): it reports its
    # own CPU time (µs), as broker-bench does for the peers.
    local bt
    bt=$(python3 -c "import json,sys
try: print(json.load(open(sys.argv[1])).get('bench_cpu_us', 0))
except Exception: print(0)" "$f.tmp")
    # others = machine busy - brokers - bench (kernel softirq work done for us
    # outside our processes counts as "other" too: an upper bound)
    local other
    other=$(python3 -c "
b0,tot0,b1,tot1=map(int,'$b0 $b1'.split())
ncpu=$(nproc); hz=$hz; secs=($t1-$t0)/1e9
busy=(b1-b0)/(tot1-tot0+1)*ncpu*100
ours=(($o1-$o0)/hz+$bt/1e6)/secs*100
print(f'{max(0.0,busy-ours):.0f}')")
    echo "#   other processes: ${other}% of a core; brokers+bench $(awk -v t=$((o1 - o0)) -v b="$bt" -v hz="$hz" 'BEGIN{printf "%.1f", t/hz + b/1e6}') cpu-seconds" | tee -a "$OUT/log.txt"
    if [ "$rc" != 0 ]; then
      echo "# $name run FAILED (rc=$rc: correctness or client error); see $f and $OUT/log.txt" | tee -a "$OUT/log.txt"
      mv "$f.tmp" "$f"; FAILED=1; r=$((r + 1)); continue
    fi
    if [ "$other" -gt "${MAX_OTHER:-15}" ]; then
      echo "#   discarded: other processes used more than MAX_OTHER=${MAX_OTHER:-15}% of a core" | tee -a "$OUT/log.txt"
      rm -f "$f.tmp"; continue
    fi
    mv "$f.tmp" "$f"; r=$((r + 1))
    sleep 0.5
  done
  [ "$r" -ge "$RUNS" ] || say "# $name: only $r undisturbed runs of $RUNS in $attempt attempts"
}
FAILED=0

# ---------------------------------------------------------------- Ordo
declare -A TPUT LAT50 LAT99
say "# Ordo: 3 brokers, 1 publisher (broker A), 3 subscribers (A, B, C), $SIZE B, $RUNS runs x ${SECS}s; load at start $(load)"
for o in "${ORDERINGS[@]}"; do
  ordo_bench "tput-$o" "$o" --duration "${SECS}s" --window "$WINDOW"
  ordo_bench "lat-$o" "$o" --duration "${SECS}s" --rate "$RATE" --warmup "${WARMUP}s"
  t=("$OUT"/tput-"$o"-*.json); l=("$OUT"/lat-"$o"-*.json)
  if [ ! -e "${t[0]}" ] || [ ! -e "${l[0]}" ]; then say "ordo $o: no undisturbed runs"; continue; fi
  pending=""
  if grep -q "partly inactive" "$OUT"/broker*.log 2>/dev/null && grep "partly inactive" "$OUT"/broker*.log | grep -q "bench.$o."; then
    pending=" (ordering layer pending in the broker: delivered FIFO)"
  fi
  bad=$(sum_key lost "${t[@]}" "${l[@]}")+$(sum_key reordered "${t[@]}" "${l[@]}")+$(sum_key duplicates "${t[@]}" "${l[@]}")
  say "ordo $o tput: per-sub $(stat3 sub_rate_mean "${t[@]}") msg/s, slowest sub $(stat3 sub_rate_min "${t[@]}"), publish $(stat3 pub_rate "${t[@]}")$pending"
  say "ordo $o lat@$RATE: p50 $(stat3 p50_us "${l[@]}") us, p90 $(stat3 p90_us "${l[@]}"), p99 $(stat3 p99_us "${l[@]}"), p99.9 $(stat3 p999_us "${l[@]}"), max $(stat3 max_us "${l[@]}")"
  say "ordo $o check: lost+reordered+duplicates over all runs = $bad; load now $(load)"
  TPUT[$o]=$(med sub_rate_mean "${t[@]}")
  LAT50[$o]=$(med p50_us "${l[@]}")
  LAT99[$o]=$(med p99_us "${l[@]}")
done
if [ ${#ORDERINGS[@]} -gt 1 ] && [ -n "${TPUT[fifo]:-}" ]; then
  for o in "${ORDERINGS[@]}"; do
    [ "$o" = fifo ] && continue
    say "ratio $o / fifo throughput: $(python3 -c "print(f'{${TPUT[$o]}/${TPUT[fifo]}:.2f}')")"
  done
fi

# ---------------------------------------------------------------- NATS (peer harness)
if [ -n "${PEERS:-}" ]; then
  # Our brokers would disturb the harness' quiet-machine check; they are idle
  # between runs, but stop them anyway so NATS gets the machine alone, as Ordo had.
  stop_all
  export PEERS_OUT=${PEERS_OUT:-$OUT/peers}
  mkdir -p "$PEERS_OUT"
  say "# NATS 3-node cluster via $PEERS/run.sh (RUNS=$RUNS SECS=$SECS SIZE=$SIZE RATE=$RATE), load $(load)"
  for mode in tput lat; do
    CARGO_TARGET_DIR=$PEERS_OUT/target RUNS=$RUNS SECS=$SECS SIZE=$SIZE RATE=$RATE WINDOW=$WINDOW \
      "$PEERS/run.sh" nats3 "$mode" \
      > "$OUT/nats3-$mode.txt" 2>&1 || echo "# nats3 $mode exited $? (see $OUT/nats3-$mode.txt)"
    grep '^SUMMARY ' "$OUT/nats3-$mode.txt" | tail -1 | sed 's/^SUMMARY //' > "$OUT/nats3-$mode.json" || true
  done
  if [ -s "$OUT/nats3-tput.json" ] && [ -s "$OUT/nats3-lat.json" ]; then
    read -r n_t n_tmin n_tmax n_50 n_99 <<< "$(python3 - "$OUT/nats3-tput.json" "$OUT/nats3-lat.json" <<'EOF'
import json, sys
t, l = (json.load(open(f)) for f in sys.argv[1:3])
print(t["sub_rate_mean"][0], t["sub_rate_mean"][1], t["sub_rate_mean"][2], l["p50_us"][0], l["p99_us"][0])
EOF
)"
    say "nats3 tput: per-sub ${n_t%.*} [${n_tmin%.*}–${n_tmax%.*}] msg/s; lat@$RATE: p50 $n_50 us, p99 $n_99 us"
    for o in "${ORDERINGS[@]}"; do
      say "$(python3 -c "
t, n = ${TPUT[$o]}, $n_t
p50, n50, p99, n99 = ${LAT50[$o]}, $n_50, ${LAT99[$o]}, $n_99
print(f'RATIO ordo-{\"$o\"}/nats3: throughput per sub {t/n:.2f}x (goal >= 1.5 for fifo); latency p50 {p50/n50:.2f}x, p99 {p99/n99:.2f}x (goal <= 1)')
")"
    done
  else
    say "# NATS figures missing: see $OUT/nats3-*.txt"
  fi
fi
# ---------------------------------------------------------------- interleaved latency
# The blocks above measure Ordo first and NATS minutes later: a load change in
# between moves the p99 ratio more than anything in either broker. LAT_ROUNDS
# rounds of Ordo / NATS 3-node / raw UDP multicast alternate instead (each run
# on a fresh cluster; bench/latency.sh), and runs disturbed by other processes
# (> MAX_OTHER % of a core) are left out of the medians.
if [ -n "${PEERS:-}" ] && [ "${LAT_ROUNDS:-0}" -gt 0 ]; then
  pb=$PEERS_OUT/target/release
  if [ -x "$pb/broker-bench" ] && [ -x "$pb/udp-limit" ]; then
    stop_all
    say "# interleaved latency: $LAT_ROUNDS rounds of ordo / nats3 / udp at $RATE msg/s, ${SECS}s each, load $(load)"
    ROUNDS=$LAT_ROUNDS SECS=$SECS RATE=$RATE SIZE=$SIZE WARMUP=$WARMUP PEERS_BIN=$pb OUT=$OUT/lat-ab \
      MAX_OTHER=${MAX_OTHER:-15} bench/latency.sh "ordo=$BIN@${BROKER_ARGS:-}" nats udp > "$OUT/lat-ab.txt" 2>&1 || true
    grep -v '^# round' "$OUT/lat-ab.txt" | tee -a "$OUT/summary.txt"
  else
    say "# interleaved latency skipped: no broker-bench/udp-limit in $pb"
  fi
fi
say "# results in $OUT (load at end $(load))"
exit "$FAILED"
