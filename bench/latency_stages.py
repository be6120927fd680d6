#!/usr/bin/env python3
"""Per-stage publish-to-delivery latency of one `ordo bench --rate` run.

Diagnostic only. Build the brokers and `ordo` with bench/latency-stages.patch
applied (against main 197ea24: it stamps each bench message, by the send time
in its payload, at the reader, driver, multicast send, delivery, outbox push
and client write, all in SystemTime µs of one host), then run e.g.

  ORDO_BENCH_TRACE=$D/bench.txt ENV_tr="ORDO_DRIVER_TRACE=$D/drv" ROUNDS=1 OUT=$D \
    bench/latency.sh tr=<dir with the patched binaries>
  bench/latency_stages.py $D

Brokers write $D/drv.stages.<pid> at a graceful stop (broker A = lowest pid);
the bench writes $D/bench.txt. Prints percentiles per segment and, for the
deliveries slower than 400 µs, which segment was the largest.
"""
import collections
import glob
import sys

d = sys.argv[1]
files = sorted(glob.glob(f"{d}/drv.stages.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
st = [collections.defaultdict(dict) for _ in files]
for i, f in enumerate(files):
    for line in open(f):
        fields = line.split()
        if len(fields) != 3:
            continue  # a line cut short by the broker's stop
        stage, sent, t = map(int, fields)
        st[i][sent].setdefault(stage, t)  # first occurrence
recv = collections.defaultdict(dict)
written = {}
for line in open(f"{d}/bench.txt"):
    fields = line.split()
    if len(fields) != 3:
        continue
    s, t, lat = map(int, fields)
    if s == 9:
        written[t] = t + lat
    else:
        recv[t][s] = t + lat
A = st[0]
segs = collections.defaultdict(list)
slow_attr = collections.Counter()
slow_n = 0
for t, subs in recv.items():
    a = A.get(t, {})
    if t not in written or not all(k in a for k in (0, 1, 2)):
        continue
    common = {
        "pub->written": written[t] - t,
        "written->read": a[0] - written[t],
        "read->cmd": a[1] - a[0],
        "cmd->sent": a[2] - a[1],
    }
    for k, v in common.items():
        segs[k].append(v)
    for s, r in subs.items():
        x = st[s].get(t, {})
        if not all(k in x for k in (3, 4, 6, 5)):
            continue
        base = a[1] if s == 0 else a[2]
        parts = dict(common)
        if s == 0:
            parts.pop("cmd->sent")
        own = {
            f'{"loc" if s == 0 else "rem"}:->deliver': x[3] - base,
            f'{"loc" if s == 0 else "rem"}:deliver->push': x[4] - x[3],
            "push->wstart": x[6] - x[4],
            "write": x[5] - x[6],
            "wdone->recv": r - x[5],
        }
        parts.update(own)
        for k, v in own.items():
            segs[k].append(v)
        if r - t > 400:
            slow_n += 1
            slow_attr[max(parts, key=parts.get)] += 1


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


print(f"{'segment':>18} {'n':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'p99.9':>6} {'max':>6}")
for k, v in segs.items():
    print(f"{k:>18} {len(v):>6} {pct(v, .5):>6} {pct(v, .9):>6} {pct(v, .99):>6} {pct(v, .999):>6} {max(v):>6}")
print("deliveries > 400 us:", slow_n, "largest segment:", dict(slow_attr.most_common()))
