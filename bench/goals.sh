#!/usr/bin/env bash
# bench/goals.sh — the issue-7 measurements compare.sh does not make:
# loss, 8 KB payloads against the raw multicast limit, scaling with the
# number of brokers, and memory under a slow subscriber. Prints one line per
# measurement and keeps every JSON and log in $OUT.
#
#   bench/goals.sh loss             # 10% injected loss vs none, RUNS alternating runs each
#   bench/goals.sh big              # 8 KiB payloads vs peers/udp-limit (needs PEERS)
#   bench/goals.sh scale 3 8 16 32  # 1 publisher + 3 subscribers on the first 3 of N brokers
#   bench/goals.sh slow             # a publisher outruns a slow subscriber for SLOW_SECS; peak RSS
#   BIN_A=dir BIN_B=dir bench/goals.sh ab   # A/B of two ordo-broker builds, alternating runs
#   BIN_A=dir BIN_B=dir AB_ARGS_A="--ordering fifo" AB_ARGS_B="--ordering causal" bench/goals.sh ab
#                                           # two orderings (or any two bench flag sets) alike
#
# Environment: RUNS (3), SECS (5), OUT (target/bench-results/goals-<time>),
# SKIP_BUILD=1, BROKER_ARGS (extra flags for every broker), PEERS/PEERS_OUT
# (as compare.sh), LOSS (10), SLOW_SECS (60); for ab: BIN_A, BIN_B (folders
# holding an ordo-broker; the bench is $BIN/ordo for both), SIZE (128),
# AB_ARGS (extra bench flags for both), AB_ARGS_A / AB_ARGS_B (for one side only).
#
# Brokers listen on loopback only, on a multicast group of their own (TTL 0),
# and are stopped by PID on exit. The machine's load average is printed with
# each figure: only ratios measured back to back mean much on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-3}
SECS=${SECS:-5}
OUT=${OUT:-$ROOT/target/bench-results/goals-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p ordo-broker -p ordo-client

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap stop_all EXIT
trap "exit 143" INT TERM

# start_cluster NAME N [broker flags...]: sets SERVERS (array), METRICS (array), CPIDS (array)
start_cluster() {
  local name=$1 n=$2; shift 2
  local cluster="goals-$name-$$" group i port mport
  group="239.255.$(( ($$ % 250) + 2 )).$(( RANDOM % 250 + 2 )):$(free_port udp)"
  SERVERS=(); METRICS=(); CPIDS=()
  for i in $(seq "$n"); do
    port=$(free_port tcp); mport=$(free_port tcp)
    # shellcheck disable=SC2086
    "${BROKER_BIN:-$BIN}/ordo-broker" --node-id "$i" --cluster "$cluster" --group "$group" \
      --listen "127.0.0.1:$port" --metrics "127.0.0.1:$mport" ${BROKER_ARGS:-} "$@" \
      > "$OUT/$name-broker$i.log" 2>&1 &
    PIDS+=($!); CPIDS+=($!)
    SERVERS+=("127.0.0.1:$port"); METRICS+=("127.0.0.1:$mport")
  done
  local got=0
  for _ in $(seq 600); do
    got=$("$BIN/ordo" --server "${SERVERS[0]}" cluster 2>/dev/null | awk '/^members/{print gsub(/incarnation/, "")}' || true)
    [ "${got:-0}" -ge "$n" ] && break
    sleep 0.1
  done
  [ "${got:-0}" -ge "$n" ] || { echo "# $name: only ${got:-0} of $n brokers joined" >&2; return 1; }
}

# cpu_ticks pids... -> utime+stime summed
cpu_ticks() {
  local p t=0 f
  for p in "$@"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') || f=0
    t=$((t + ${f:-0}))
  done
  echo "$t"
}

# bench FILE SERVERS [bench flags...]: one ordo bench run, JSON to FILE, broker CPU ticks to FILE.cpu
bench() {
  local f=$1 s=$2; shift 2
  local t0 t1
  t0=$(cpu_ticks "${CPIDS[@]}")
  "$BIN/ordo" bench --servers "$s" --json "$@" > "$f" 2>> "$OUT/bench.log" || true
  t1=$(cpu_ticks "${CPIDS[@]}")
  echo $((t1 - t0)) > "$f.cpu"
}

# summary KEY FILES... -> median [min–max] and the failure count
summary() {
  python3 - "$@" <<'EOF'
import json, os, sys
key, files = sys.argv[1], sys.argv[2:]
hz = os.sysconf("SC_CLK_TCK")
rows = []
for f in files:
    try:
        d = json.load(open(f))
    except Exception:
        continue
    cpu = int(open(f + ".cpu").read()) / hz
    rows.append((d[key], d["lost"] + d["reordered"] + d["duplicates"], cpu / max(d["msgs"], 1) * 1e6, d["ok"]))
if not rows:
    print("no runs"); sys.exit()
v = sorted(r[0] for r in rows)
c = sorted(r[2] for r in rows)
med = lambda x: x[len(x) // 2]
print(f"{med(v):.0f} [{v[0]:.0f}-{v[-1]:.0f}] ({len(rows)} runs, lost+reordered+dup {sum(r[1] for r in rows)}, "
      f"not ok {sum(1 for r in rows if not r[3])}, broker cpu {med(c):.2f} us/msg)")
EOF
}
med_of() { python3 -c "import json,sys; v=sorted(json.load(open(f))[sys.argv[1]] for f in sys.argv[2:]); print(v[len(v)//2])" "$@"; }

counters() { # metrics addresses... -> NAK/repair counters summed
  local m
  for m in "$@"; do curl -s "http://$m/metrics"; done |
    grep -E '^ordo_(naks_sent|naks_suppressed|naks_rate_limited|retransmissions_sent|retransmissions_suppressed|gaps_detected|gaps_repaired|slow_consumer_disconnects)_total |^ordo_datagrams_dropped_total\{reason="(injected|buffer_full)"\}' |
    awk '{a[$1]+=$2} END {for (k in a) printf "%s=%d ", k, a[k]; print ""}'
}

do_loss() {
  local loss=${LOSS:-10} i
  start_cluster loss0 3; local s0; s0=$(IFS=,; echo "${SERVERS[*]}"); local c0=("${CPIDS[@]}") m0=("${METRICS[@]}")
  start_cluster lossy 3 --inject-loss-percent "$loss"; local s1; s1=$(IFS=,; echo "${SERVERS[*]}"); local c1=("${CPIDS[@]}") m1=("${METRICS[@]}")
  say "# loss: 3 brokers, 1 pub + 3 subs, 128 B, ${SECS}s x $RUNS alternating, ${loss}% injected receive loss vs none; load $(load)"
  for i in $(seq "$RUNS"); do
    CPIDS=("${c0[@]}"); bench "$OUT/loss0-$i.json" "$s0" --pub 1 --sub 3 --size 128 --duration "${SECS}s"
    CPIDS=("${c1[@]}"); bench "$OUT/lossy-$i.json" "$s1" --pub 1 --sub 3 --size 128 --duration "${SECS}s"
  done
  say "lossless per-sub msg/s: $(summary sub_rate_mean "$OUT"/loss0-*.json)"
  say "${loss}% loss per-sub msg/s: $(summary sub_rate_mean "$OUT"/lossy-*.json)"
  say "RATIO loss/lossless: $(python3 -c "print(f'{$(med_of sub_rate_mean "$OUT"/lossy-*.json)/$(med_of sub_rate_mean "$OUT"/loss0-*.json):.2f}')") (goal >= 0.8); load $(load)"
  say "lossy counters: $(counters "${m1[@]}")"
  stop_all
}

do_big() {
  local size=8192 i
  start_cluster big 3
  local s; s=$(IFS=,; echo "${SERVERS[*]}")
  say "# 8 KiB: 3 brokers, 1 pub + 3 subs, ${SECS}s x $RUNS; load $(load)"
  for i in $(seq "$RUNS"); do
    # The window in bytes stays far below --client-queue-bytes (64 MiB): 10000
    # messages of 8 KiB would overflow the local subscriber's queue by design.
    bench "$OUT/big-$i.json" "$s" --pub 1 --sub 3 --size "$size" --duration "${SECS}s" --window "${BIG_WINDOW:-1000}"
  done
  stop_all
  local ordo_bps
  ordo_bps=$(python3 -c "print($(med_of sub_rate_mean "$OUT"/big-*.json) * $size)")
  say "ordo 8 KiB per-sub msg/s: $(summary sub_rate_mean "$OUT"/big-*.json) = $(python3 -c "print(f'{$ordo_bps/1e6:.0f}')") MB/s payload per subscriber"
  if [ -n "${PEERS:-}" ]; then
    export PEERS_OUT=${PEERS_OUT:-$OUT/peers}
    mkdir -p "$PEERS_OUT"
    CARGO_TARGET_DIR=$PEERS_OUT/target RUNS=$RUNS SIZES=$size "$PEERS/run.sh" udp mcast 3 sendto \
      > "$OUT/udp-limit.txt" 2>&1 || echo "# udp-limit exited $? (see $OUT/udp-limit.txt)"
    local udp_bps
    # Payload MB/s (1e6 bytes) per receiver: the SUMMARY median of the runs
    # udp-limit kept (undisturbed); without one, the median of every run.
    udp_bps=$(python3 - "$OUT/udp-limit.txt" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
summ = [json.loads(l.split(" ", 1)[1]) for l in lines if l.startswith("SUMMARY ")]
if summ and summ[-1].get("runs", 0) > 0:
    print(summ[-1]["rx_mbps"][0] * 1e6)
else:
    v = sorted(json.loads(l.split(" ", 1)[1])["rx_mbps_mean"] * 1e6 for l in lines if l.startswith("RESULT "))
    print(v[len(v) // 2] if v else 0)
    print("# udp-limit kept no undisturbed run: median of all runs", file=sys.stderr)
EOF
)
    say "udp-limit mcast 3 receivers, 8 KiB: $(python3 -c "print(f'{$udp_bps/1e6:.0f}')") MB/s per receiver (median)"
    say "RATIO ordo/udp-limit bytes per receiver: $(python3 -c "print(f'{$ordo_bps/max($udp_bps,1):.2f}')") (goal >= 0.5); load $(load)"
  fi
}

do_scale() {
  local n i
  for n in "$@"; do
    start_cluster "scale$n" "$n"
    local s; s=$(IFS=,; echo "${SERVERS[*]:0:3}")
    say "# scale: $n brokers, 1 pub + 3 subs on the first 3, 128 B, ${SECS}s x $RUNS; load $(load)"
    for i in $(seq "$RUNS"); do
      bench "$OUT/scale$n-$i.json" "$s" --pub 1 --sub 3 --size 128 --duration "${SECS}s"
    done
    local rss=0 p
    for p in "${CPIDS[@]}"; do rss=$((rss + $(awk '/VmHWM/{print $2}' "/proc/$p/status"))); done
    say "$n brokers per-sub msg/s: $(summary sub_rate_mean "$OUT"/scale$n-*.json); peak RSS of all brokers $((rss / 1024)) MiB"
    stop_all
  done
}

do_slow() {
  local secs=${SLOW_SECS:-60}
  start_cluster slow 3
  local a=${SERVERS[0]} b=${SERVERS[1]} m=("${METRICS[@]}") c=("${CPIDS[@]}")
  say "# slow subscriber: publisher + fast subscriber on A for ${secs}s; on B a subscriber reading ~2000 msg/s, reconnected every 5 s; load $(load)"
  "$BIN/ordo" bench --servers "$a" --pub 1 --sub 1 --size 128 --duration "${secs}s" --json > "$OUT/slow-bench.json" 2>> "$OUT/bench.log" &
  local bp=$! end=$((SECONDS + secs))
  while [ $SECONDS -lt $end ] && kill -0 $bp 2>/dev/null; do
    timeout 5 "$BIN/ordo" sub --server "$b" ordo.bench 2>/dev/null |
      timeout 5 python3 -c "
import sys, time
for _ in sys.stdin:
    time.sleep(0.0005)" >/dev/null 2>&1 || true
  done
  wait $bp || true
  local p i=0
  for p in "${c[@]}"; do
    i=$((i + 1))
    say "broker $i: peak RSS $(awk '/VmHWM/{print $2}' "/proc/$p/status") KiB, now $(awk '/VmRSS/{print $2}' "/proc/$p/status") KiB"
  done
  say "slow-subscriber counters: $(counters "${m[@]}")"
  say "fast subscriber: $(python3 -c "import json; d=json.load(open('$OUT/slow-bench.json')); print(round(d['sub_rate_mean']), 'msg/s, lost', d['lost'], 'ok', d['ok'])")"
  stop_all
}

# cpu_med FILES... -> median broker CPU µs per message
cpu_med() {
  python3 - "$@" <<'EOF2'
import json, os, sys
hz = os.sysconf("SC_CLK_TCK")
v = sorted(int(open(f + ".cpu").read()) / hz / max(json.load(open(f))["msgs"], 1) * 1e6 for f in sys.argv[1:])
print(v[len(v) // 2])
EOF2
}

do_ab() {
  local size=${SIZE:-128} i
  : "${BIN_A:?set BIN_A to the folder of the A ordo-broker}" "${BIN_B:?set BIN_B}"
  BROKER_BIN=$BIN_A start_cluster abA 3; local sa; sa=$(IFS=,; echo "${SERVERS[*]}"); local ca=("${CPIDS[@]}")
  BROKER_BIN=$BIN_B start_cluster abB 3; local sb; sb=$(IFS=,; echo "${SERVERS[*]}"); local cb=("${CPIDS[@]}")
  say "# A/B: A=$BIN_A ${AB_ARGS_A:-} B=$BIN_B ${AB_ARGS_B:-}; 3 brokers each, 1 pub + 3 subs, $size B, ${SECS}s x $RUNS alternating (order swapped every run); load $(load)"
  for i in $(seq "$RUNS"); do
    local order=(A B); [ $((i % 2)) = 0 ] && order=(B A)
    local x
    for x in "${order[@]}"; do
      # shellcheck disable=SC2086
      if [ "$x" = A ]; then CPIDS=("${ca[@]}"); bench "$OUT/abA-$i.json" "$sa" --pub 1 --sub 3 --size "$size" --duration "${SECS}s" ${AB_ARGS:-} ${AB_ARGS_A:-}
      else CPIDS=("${cb[@]}"); bench "$OUT/abB-$i.json" "$sb" --pub 1 --sub 3 --size "$size" --duration "${SECS}s" ${AB_ARGS:-} ${AB_ARGS_B:-}; fi
    done
  done
  say "A per-sub msg/s: $(summary sub_rate_mean "$OUT"/abA-*.json)"
  say "B per-sub msg/s: $(summary sub_rate_mean "$OUT"/abB-*.json)"
  say "RATIO B/A: per-sub msg/s $(python3 -c "print(f'{$(med_of sub_rate_mean "$OUT"/abB-*.json)/$(med_of sub_rate_mean "$OUT"/abA-*.json):.3f}')"), broker CPU per msg $(python3 -c "print(f'{$(cpu_med "$OUT"/abB-*.json)/$(cpu_med "$OUT"/abA-*.json):.3f}')"); load $(load)"
  stop_all
}

cmd=${1:-}; shift || true
case "$cmd" in
  loss) do_loss ;;
  big) do_big ;;
  scale) [ $# -gt 0 ] || set -- 3 8 16; do_scale "$@" ;;
  slow) do_slow ;;
  ab) do_ab ;;
  *) echo "usage: $0 loss|big|scale N...|slow|ab" >&2; exit 2 ;;
esac
say "# results in $OUT"
