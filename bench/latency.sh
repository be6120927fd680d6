#!/usr/bin/env bash
# bench/latency.sh — publish-to-delivery latency at a fixed rate, A/B style:
# several variants (Ordo builds or broker flags, NATS 3-node, raw UDP
# multicast) measured in interleaved rounds, so machine load hits each alike.
#
#   bench/latency.sh VARIANT...
#     name=BINDIR[@BROKER FLAGS]   a 3-broker Ordo cluster from BINDIR (ordo-broker, ordo)
#     nats                         NATS 3-node cluster via peers' broker-bench (needs PEERS_BIN)
#     udp                          peers' udp-limit one-way multicast latency, 3 receivers
#   e.g. bench/latency.sh base=/tmp/base/release new=target/release nats udp
#
# Environment: ROUNDS (5), SECS (5), RATE (10000), SIZE (128), WARMUP (1), ORDERING (fifo:
#   the Ordo topic's ordering; NATS and UDP have none), MAX_OTHER (leave
#   out of the summary runs during which other processes used more than this % of a core),
#   PEERS_BIN (directory with broker-bench and udp-limit, e.g. /work/peers-out/target/release),
#   OUT (default target/bench-results/lat-<UTC time>), ENV_<name> (environment for that
#   variant's brokers, e.g. ENV_new="MALLOC_ARENA_MAX=1").
# Every round runs every variant once; the order rotates each round. Each Ordo
# run starts a fresh cluster (own cluster name, own group, TTL 0, loopback) and
# stops it by PID. Prints per variant the median [min–max] over rounds of p50,
# p99, p99.9, the local subscriber's and the remote ones' p99, and the brokers'
# CPU time per message.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
RATE=${RATE:-10000}
SIZE=${SIZE:-128}
WARMUP=${WARMUP:-1}
ORDERING=${ORDERING:-fifo}
OUT=${OUT:-$ROOT/target/bench-results/lat-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
[ $# -gt 0 ] || { sed -n '2,20p' "$0"; exit 2; }
VARIANTS=("$@")

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap stop_all EXIT
trap "exit 143" INT TERM
pid_ticks() {
  local p t=0 f
  for p in "$@"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') || f=0
    t=$((t + ${f:-0}))
  done
  echo "$t"
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

ctx_switches() { # pids... -> context switches (voluntary + involuntary) of all their threads
  local p n=0 x
  for p in "$@"; do
    x=$(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/{n+=$2} END{print n+0}' || true)
    n=$((n + ${x:-0}))
  done
  echo "$n"
}

run_ordo() { # name bindir flags outfile
  local name=$1 bin=$2 flags=$3 f=$4 envs
  local var="ENV_$name"; envs=${!var:-}
  local cluster="lat-$$-$RANDOM" group servers=() i port mport
  group="239.255.$(( ($$ % 250) + 2 )).$(( RANDOM % 250 + 2 )):$(free_port udp)"
  for i in 1 2 3; do
    port=$(free_port tcp); mport=$(free_port tcp)
    # shellcheck disable=SC2086
    env $envs "$bin/ordo-broker" --node-id "$i" --cluster "$cluster" --group "$group" \
      --listen "127.0.0.1:$port" --metrics "127.0.0.1:$mport" $flags > "$OUT/$name-broker$i.log" 2>&1 &
    PIDS+=($!)
    servers+=("127.0.0.1:$port")
  done
  local s n; s=$(IFS=,; echo "${servers[*]}")
  for _ in $(seq 300); do
    n=$("$bin/ordo" --server "${servers[0]}" cluster 2>/dev/null | awk '/^members/{print gsub(/incarnation/, "")}' || true)
    [ "${n:-0}" -ge 3 ] && break
    sleep 0.1
  done
  sleep 0.5
  local t0 t1 c0 c1 bt bc m0 m1 w0 w1
  t0=$(pid_ticks "${PIDS[@]}"); c0=$(ctx_switches "${PIDS[@]}"); m0=$(busy_ticks); w0=$(date +%s%N)
  # Nothing samples the processes while the bench runs: a sample starts a few
  # processes (sed, awk, cat), and every 200 ms of that showed in the tail as
  # stalls of all subscribers at once. The bench reports its own CPU time.
  "$bin/ordo" bench --servers "$s" --pub 1 --sub 3 --size "$SIZE" --duration "${SECS}s" \
    --rate "$RATE" --warmup "${WARMUP}s" --ordering "$ORDERING" --topic "lat.$name" --json > "$f" 2>> "$OUT/log.txt" || true
  t1=$(pid_ticks "${PIDS[@]}"); c1=$(ctx_switches "${PIDS[@]}"); m1=$(busy_ticks); w1=$(date +%s%N)
  echo "$((t1 - t0))" > "$f.ticks"
  read -r bt bc < <(python3 -c "import json,sys
try: j = json.load(open(sys.argv[1])); print(j.get('bench_cpu_us', 0), j.get('bench_ctx_switches', 0))
except Exception: print(0, 0)" "$f")
  # other processes' CPU in % of one core (machine busy - brokers - bench; an upper
  # bound: kernel work done for us outside our processes counts as other)
  python3 -c "print(max(0.0, ($m1 - $m0 - $t1 + $t0) / $(getconf CLK_TCK) / (($w1 - $w0) / 1e9) * 100 - $bt / (($w1 - $w0) / 1e3) * 100))" > "$f.other"
  echo "$((c1 - c0)) $bt $bc" > "$f.cs"
  stop_all
}

run_nats() { # outfile
  local f=$1 i routes=nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224
  for i in 0 1 2; do
    nats-server -a 127.0.0.1 -p $((14222 + i)) -n "node$i" --cluster_name latbench \
      --cluster "nats://127.0.0.1:$((16222 + i))" --routes "$routes" -l "$OUT/nats-$i.log" &
    PIDS+=($!)
  done
  for _ in $(seq 100); do
    local ok=1
    for i in 0 1 2; do
      c=$(grep -c 'Route connection created' "$OUT/nats-$i.log" 2>/dev/null || true)
      [ "${c:-0}" -ge 2 ] || ok=0
    done
    [ $ok = 1 ] && break; sleep 0.1
  done
  sleep 0.5
  local watch="a=${PIDS[0]},b=${PIDS[1]},c=${PIDS[2]}"
  "$PEERS_BIN/broker-bench" --target nats --pub nats://127.0.0.1:14222 \
    --sub nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224 --subs 3 \
    --mode lat --size "$SIZE" --secs "$SECS" --runs 1 --rate "$RATE" --warmup "$WARMUP" \
    --max-other 100 --label latbench --watch "$watch" > "$f.txt" 2>&1 || true
  grep '^RESULT ' "$f.txt" | tail -1 | sed 's/^RESULT //' > "$f"
  rm -f "$OUT"/nats-*.log
  stop_all
}

run_udp() { # outfile
  local f=$1
  "$PEERS_BIN/udp-limit" --mode mcast --receivers 3 --rate "$RATE" --warmup "$WARMUP" \
    --sizes "$SIZE" --secs "$SECS" --runs 1 --rcvbuf 33554432 --max-other 100 --label latbench > "$f.txt" 2>&1 || true
  grep '^RESULT ' "$f.txt" | tail -1 | sed 's/^RESULT //' > "$f"
  echo 0 > "$f.ticks"
}

n=${#VARIANTS[@]}
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    v=${VARIANTS[$(( (k + r - 1) % n ))]}
    name=${v%%=*}
    f="$OUT/$name-$r.json"
    echo "# round $r/$ROUNDS: $v (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/log.txt"
    case "$v" in
      nats) run_nats "$f" ;;
      udp) run_udp "$f" ;;
      *=*) spec=${v#*=}; bindir=${spec%%@*}; flags=""; [ "$spec" != "$bindir" ] && flags=${spec#*@}
           run_ordo "$name" "$bindir" "$flags" "$f" ;;
      *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
  done
done

MAX_OTHER=${MAX_OTHER:-1000} python3 - "$OUT" "$SECS" "$RATE" "${VARIANTS[@]}" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out, secs, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
max_other = float(os.environ.get("MAX_OTHER", "1000"))
skipped = {}
hz = os.sysconf("SC_CLK_TCK")
medians = {}
def median(v):
    v = sorted(v); n = len(v)
    return None if not n else (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2)
def stat(v):
    v = sorted(v)
    if not v: return "-"
    n = len(v); med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    if med < 20: return f"{med:.1f} [{v[0]:.1f}-{v[-1]:.1f}]"
    return f"{med:.0f} [{v[0]:.0f}-{v[-1]:.0f}]"
print(f"# {out}: median [min-max] over rounds, µs; cpu = brokers' utime+stime per message"
      + (f"; rounds with other processes above {max_other:.0f}% of a core left out" if max_other < 1000 else ""))
for v in sys.argv[4:]:
    name = v.split("=", 1)[0]
    rows = {"p50": [], "p99": [], "p999": [], "local_p99": [], "remote_p99": [], "cpu_us": [],
            "cs": [], "bench_cpu_us": [], "bench_cs": []}
    r = 1
    while os.path.exists(f"{out}/{name}-{r}.json"):
        try:
            j = json.load(open(f"{out}/{name}-{r}.json"))
        except Exception:
            r += 1; continue
        other = j.get("cpu_other_pct")
        try:
            other = float(open(f"{out}/{name}-{r}.json.other").read())
        except (OSError, ValueError):
            pass
        if other is not None and other > max_other:
            skipped[name] = skipped.get(name, 0) + 1
            r += 1; continue
        if name == "udp":
            lat = j.get("lat_us") or []
            for k, x in zip(("p50", "p99", "p999"), lat):
                rows[k].append(x)
        else:
            for k, key in (("p50", "p50_us"), ("p99", "p99_us"), ("p999", "p999_us")):
                rows[k].append(j[key])
            subs = j.get("per_sub", [])
            if subs:
                rows["local_p99"].append(subs[0]["p99_us"])
                rows["remote_p99"].append(max(s["p99_us"] for s in subs[1:]))
            if name == "nats":
                pct = sum(j.get("cpu_watch_pct", {}).values())
                if pct: rows["cpu_us"].append(pct / 100 / rate * 1e6)
            else:
                ticks = int(open(f"{out}/{name}-{r}.json.ticks").read() or 0)
                msgs = j.get("measured_msgs") or 0
                if msgs: rows["cpu_us"].append(ticks / hz * 1e6 / (msgs * (1 + 1 / secs)))
                try:
                    cs, bt, bc = map(int, open(f"{out}/{name}-{r}.json.cs").read().split())
                    total = msgs * (1 + 1 / secs)
                    rows["cs"].append(cs / total); rows["bench_cpu_us"].append(bt / total)
                    rows["bench_cs"].append(bc / total)
                except (OSError, ValueError):
                    pass
        r += 1
    print(f"{name:>10}: n={len(rows['p50'])}{'' if not skipped.get(name) else f' (-{skipped[name]})'} p50 {stat(rows['p50'])}  p99 {stat(rows['p99'])}  p99.9 {stat(rows['p999'])}"
          f"  | local p99 {stat(rows['local_p99'])}  remote p99 {stat(rows['remote_p99'])}  | cpu/msg {stat(rows['cpu_us'])}"
          + (f"  switches/msg {stat(rows['cs'])}  bench cpu/msg {stat(rows['bench_cpu_us'])} switches/msg {stat(rows['bench_cs'])}" if rows['cs'] else ""))
    medians[name] = (median(rows["p50"]), median(rows["p99"]))
if medians.get("nats") and all(medians["nats"]):
    n50, n99 = medians["nats"]
    for name, (m50, m99) in medians.items():
        if name in ("nats", "udp") or m50 is None:
            continue
        print(f"RATIO {name}/nats3 (medians over rounds): p50 {m50 / n50:.2f}x, p99 {m99 / n99:.2f}x (goal <= 1, stretch 0.5)")
print("# per round, p50/p99 µs (other processes, % of a core):")
r = 1
names = [v.split("=", 1)[0] for v in sys.argv[4:]]
while any(os.path.exists(f"{out}/{n}-{r}.json") for n in names):
    row = []
    for n in names:
        try:
            j = json.load(open(f"{out}/{n}-{r}.json"))
            a, b = (j["lat_us"][0], j["lat_us"][1]) if "lat_us" in j else (j["p50_us"], j["p99_us"])
            try:
                o = float(open(f"{out}/{n}-{r}.json.other").read())
            except (OSError, ValueError):
                o = j.get("cpu_other_pct", -1)
            row.append(f"{n} {a:.0f}/{b:.0f} ({o:.0f}%)")
        except Exception:
            row.append(f"{n} -")
    print(f"#  {r}: " + " | ".join(row)); r += 1
PY
