#!/usr/bin/env python3
"""bench/ab_cpu.py — A/B of two Ordo builds by CPU per delivered message.

Starts two local 3-broker clusters (one per build) and runs `ordo bench --pub 1
--sub 3` against them alternately (A B, B A, ...), each side with its own
`ordo` binary, so both broker and bench client changes are measured. Per run it
records per-subscriber msg/s, the brokers' CPU (utime+stime from /proc, all
threads) and the bench client's CPU (rusage of the child), each divided by the
messages published, plus the brokers' context switches per 1000 messages.

  bench/ab_cpu.py --a DIR_A --b DIR_B [--runs 6] [--secs 5] [--size 128]
                  [--a-args "--flag x"] [--b-args "..."] [--bench-args "..."]
                  [--a-env K=V ...] [--b-env K=V ...]

DIR_* each hold `ordo-broker` and `ordo` (e.g. a copy of target/release).
--a-env/--b-env reach that side's `ordo` runs too, so a TLS side can be set
up by environment: ORDO_TLS_CERT/ORDO_TLS_KEY for its brokers and
ORDO_TLS_CA for its clients (neither reads the other's variables).
Brokers listen on loopback only, on a multicast group of their own (TTL 0),
and are stopped by PID on exit. Prints one line per run and the medians.
"""
import argparse
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def proc_ctxt(pid):
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                        n += int(line.split()[1])
        except FileNotFoundError:
            pass
    return n


class Cluster:
    def __init__(self, name, bindir, args, env, out):
        self.bindir, self.procs, self.servers = bindir, [], []
        group = f"239.255.{random.randint(2, 250)}.{random.randint(2, 250)}:{free_port(socket.SOCK_DGRAM)}"
        cluster = f"ab-{name}-{os.getpid()}"
        e = dict(os.environ)
        e.update(env)
        self.env = e
        for i in (1, 2, 3):
            port = free_port(socket.SOCK_STREAM)
            mport = free_port(socket.SOCK_STREAM)
            log = open(os.path.join(out, f"{name}-broker{i}.log"), "w")
            p = subprocess.Popen(
                [f"{bindir}/ordo-broker", "--node-id", str(i), "--cluster", cluster,
                 "--group", group, "--listen", f"127.0.0.1:{port}",
                 "--metrics", f"127.0.0.1:{mport}"] + args,
                stdout=log, stderr=subprocess.STDOUT, env=e)
            self.procs.append(p)
            self.servers.append(f"127.0.0.1:{port}")
        for _ in range(600):
            r = subprocess.run([f"{bindir}/ordo", "--server", self.servers[0], "cluster"],
                               capture_output=True, text=True, env=e)
            members = [l for l in r.stdout.splitlines() if l.startswith("members")]
            if members and members[0].count("incarnation") >= 3:
                return
            time.sleep(0.1)
        raise SystemExit(f"cluster {name} did not form")

    def ticks(self):
        return sum(proc_ticks(p.pid) for p in self.procs)

    def ctxt(self):
        return sum(proc_ctxt(p.pid) for p in self.procs)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def run_one(c, args, topic):
    t0, x0 = c.ticks(), c.ctxt()
    cmd = [f"{c.bindir}/ordo", "bench", "--servers", ",".join(c.servers), "--pub", "1",
           "--sub", "3", "--size", str(args.size), "--duration", f"{args.secs}s",
           "--topic", topic, "--json"] + shlex.split(args.bench_args)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=c.env)
    out, err = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    t1, x1 = c.ticks(), c.ctxt()
    try:
        d = json.loads(out)
    except json.JSONDecodeError:
        print(f"bench failed: rc={p.returncode} {err.decode()[-500:]}", file=sys.stderr)
        return None
    n = max(d["msgs"], 1)
    return {
        "rate": d["sub_rate_mean"],
        "broker_us": (t1 - t0) / HZ / n * 1e6,
        "bench_us": (ru.ru_utime + ru.ru_stime) / n * 1e6,
        "ctx_per_k": (x1 - x0) / n * 1000,
        "bad": d["lost"] + d["reordered"] + d["duplicates"],
        "ok": p.returncode == 0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--a-args", default="")
    ap.add_argument("--b-args", default="")
    ap.add_argument("--a-env", nargs="*", default=[])
    ap.add_argument("--b-env", nargs="*", default=[])
    ap.add_argument("--bench-args", default="")
    ap.add_argument("--out", default=f"/tmp/ab-{os.getpid()}")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = lambda kv: dict(x.split("=", 1) for x in kv)
    clusters = {}
    try:
        clusters["A"] = Cluster("A", args.a, shlex.split(args.a_args), env(args.a_env), args.out)
        clusters["B"] = Cluster("B", args.b, shlex.split(args.b_args), env(args.b_env), args.out)
        res = {"A": [], "B": []}
        for i in range(args.runs):
            for side in ("AB" if i % 2 == 0 else "BA"):
                r = run_one(clusters[side], args, f"ab.{side}.{i}")
                if r is None:
                    continue
                res[side].append(r)
                print(f"run {i} {side}: {r['rate']:>9.0f} msg/s/sub  broker {r['broker_us']:.3f} us/msg"
                      f"  bench {r['bench_us']:.3f} us/msg  ctxsw {r['ctx_per_k']:.1f}/k"
                      f"  bad {r['bad']} ok {r['ok']}  load {open('/proc/loadavg').read().split()[0]}",
                      flush=True)
        med = {s: {k: statistics.median(r[k] for r in res[s]) for k in
                   ("rate", "broker_us", "bench_us", "ctx_per_k")} for s in res if res[s]}
        for s, m in med.items():
            print(f"{s} median: {m['rate']:.0f} msg/s/sub, broker {m['broker_us']:.3f} us/msg, "
                  f"bench {m['bench_us']:.3f} us/msg, sum {m['broker_us'] + m['bench_us']:.3f}, "
                  f"ctxsw {m['ctx_per_k']:.1f}/k")
        if len(med) == 2:
            a, b = med["A"], med["B"]
            print(f"B/A: rate {b['rate'] / a['rate']:.3f}, broker cpu {b['broker_us'] / a['broker_us']:.3f}, "
                  f"bench cpu {b['bench_us'] / a['bench_us']:.3f}, sum "
                  f"{(b['broker_us'] + b['bench_us']) / (a['broker_us'] + a['bench_us']):.3f}, "
                  f"ctxsw {b['ctx_per_k'] / max(a['ctx_per_k'], 1e-9):.3f}")
    finally:
        for c in clusters.values():
            c.stop()


if __name__ == "__main__":
    main()
