#!/usr/bin/env python3
"""Node benchmark: time from request to published connection parameters
(median and p95 of N requests of the minimal `hello` release), and the
node's idle resident memory.

Runs our master (`slapos proxy start`) and our node (`slapos node run`) as
two processes on this machine, so the node's memory is its own.
Usage: python3 bench/node.py [--bin target/release/slapos] [-n 20]
Prints a table and writes bench/results-node-<date>.json.
"""

import argparse
import datetime
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait(predicate, deadline, what):
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "slapos"))
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"{args.bin} missing: cargo build --release -p slapos")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="slapos-node-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = tmp / "slapos.cfg"
    cfg.write_text(
        f"[slapos]\nmaster_url = {base}\ncomputer_id = BENCH\ninstance_root = {tmp}/inst\nsoftware_root = {tmp}/soft\n"
        f"[slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {tmp}/proxy.db\n"
        f"[slapformat]\npartition_amount = 4\nalter_network = false\nalter_user = false\n"
        f"[slapos-node]\npoll_interval = 1\nport_base = {30000 + (port % 1000) * 10}\n"
    )
    release = f"file://{REPO}/catalog/hello/software.toml"
    procs = []
    try:
        master = subprocess.Popen([args.bin, "proxy", "start", "--cfg", cfg], stderr=open(tmp / "master.log", "w"))
        procs.append(master)
        wait(lambda: subprocess.run(["curl", "-sf", f"{base}/getRunId"], capture_output=True).returncode == 0,
             time.monotonic() + 20, "the master")
        subprocess.run([args.bin, "node", "format", "--cfg", cfg], check=True, capture_output=True)
        subprocess.run([args.bin, "supply", release, "BENCH", "--cfg", cfg], check=True, capture_output=True)
        node = subprocess.Popen([args.bin, "node", "run", "--cfg", cfg], stderr=open(tmp / "node.log", "w"))
        procs.append(node)
        wait(lambda: any(s["reported_state"] == "available" for s in http_json("GET", f"{base}/api/v1/computers/BENCH/software")),
             time.monotonic() + 60, "the release to be installed")
        time.sleep(2)
        idle_rss = rss_kib(node.pid)

        latencies = []
        for i in range(args.n):
            title = f"bench-{i}"
            t0 = time.monotonic()
            inst = http_json("POST", f"{base}/api/v1/instances",
                             {"software_release": release, "title": title, "parameters": {"greeting": f"hi {i}"}})
            wait(lambda: http_json("GET", f"{base}/api/v1/instances/{inst['id']}")["connection_parameters"].get("url"),
                 t0 + 30, f"{title}'s connection parameters")
            latencies.append((time.monotonic() - t0) * 1000)
            http_json("PUT", f"{base}/api/v1/instances/{inst['id']}/state", {"state": "destroyed"})
            wait(lambda: http_json("GET", f"{base}/api/v1/computers/BENCH")["computer"]["partitions_free"] == 4,
                 time.monotonic() + 30, f"{title} to be destroyed")
        busy_rss = rss_kib(node.pid)
        latencies.sort()
        result = {
            "date": datetime.date.today().isoformat(),
            "requests": args.n,
            "request_to_connection_ms_median": round(statistics.median(latencies), 1),
            "request_to_connection_ms_p95": round(latencies[max(0, int(len(latencies) * 0.95) - 1)], 1),
            "request_to_connection_ms_max": round(latencies[-1], 1),
            "node_idle_rss_mib": round(idle_rss / 1024, 1),
            "node_rss_after_run_mib": round(busy_rss / 1024, 1),
        }
        print(f"{'metric':<40} {'value':>10}   target")
        print(f"{'request → connection, median (ms)':<40} {result['request_to_connection_ms_median']:>10}   < 500")
        print(f"{'request → connection, p95 (ms)':<40} {result['request_to_connection_ms_p95']:>10}")
        print(f"{'node idle RSS (MiB)':<40} {result['node_idle_rss_mib']:>10}   < 30")
        print(f"{'node RSS after the run (MiB)':<40} {result['node_rss_after_run_mib']:>10}")
        out = REPO / "bench" / f"results-node-{result['date']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        # Services run in their own sessions: stop what the node left.
        subprocess.run(["pkill", "-f", str(tmp)], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
