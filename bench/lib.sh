# bench/lib.sh — shell helpers shared by compare.sh, goals.sh and latency.sh
# (sourced, not run): processes stopped by PID on exit, free loopback ports,
# the load average, and a summary line writer.

# PIDs of everything a script started; stop_all stops them (TERM, then KILL
# after 5 s) and runs on exit.
PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  PIDS=()
}

# free_port tcp|udp: a port nothing on 127.0.0.1 uses right now.
free_port() {
  python3 - "$1" <<'PY'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

load() { cut -d' ' -f1-3 /proc/loadavg; }
# say LINE: print it and append it to $OUT/summary.txt.
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
