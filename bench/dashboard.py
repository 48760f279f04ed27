#!/usr/bin/env python3
"""Dashboard benchmark: how long the master takes to render pages of the
instance list when it holds many instances (issue 5: 10,000 instances, first
page under 100 ms).

    python3 bench/dashboard.py [--instances 10000] [--samples 50] [--bin target/release/slapos]

Starts `slapos proxy start` on a fresh SQLite database, registers a computer
with as many partitions as instances, requests them through the JSON API
(8 client threads), reports every partition started the way a node does, then
times GET requests of dashboard pages (server-side time as the client sees it
on loopback: request sent to last byte read) and prints median and p95.
The reference proxy has no dashboard, so there is nothing to run beside it.
"""

import argparse
import concurrent.futures
import html
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse

REPO = pathlib.Path(__file__).resolve().parent.parent
COMP = "COMP-BENCH"
SR = "https://example.org/bench/software.cfg"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def xml_value(v):
    return "<string>%s</string>" % v if v is not None else "<none/>"


def register(port, n):
    """loadComputerConfigurationFromXML (the marshal format of slapos.util.dumps)."""
    parts = []
    for i in range(n):
        addr = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
        parts.append(
            "<dictionary id='i%d'><string>address_list</string><list id='l%d'>"
            "<dictionary id='a%d'><string>addr</string><string>%s</string>"
            "<string>netmask</string><string>255.0.0.0</string></dictionary></list>"
            "<string>reference</string><string>slappart%d</string></dictionary>"
            % (i, i, i, addr, i))
    xml = ("<?xml version='1.0'?><marshal><dictionary id='i-1'>"
           "<string>address</string><string>10.0.0.1</string>"
           "<string>netmask</string><string>255.0.0.0</string>"
           "<string>partition_list</string><list id='pl'>%s</list>"
           "<string>reference</string><string>%s</string></dictionary></marshal>"
           % ("".join(parts), COMP))
    body = urllib.parse.urlencode({"xml": xml})
    status, answer = Client(port).call(
        "POST", "/loadComputerConfigurationFromXML", body,
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, (status, answer[:300])


def request_range(port, titles):
    c = Client(port)
    for t in titles:
        body = json.dumps({"software_release": SR, "title": t,
                           "parameters": {"size": t[-3:]}, "sla": {"computer_guid": COMP}})
        status, answer = c.call("POST", "/api/v1/instances", body,
                                {"Content-Type": "application/json"})
        assert status in (200, 201), (status, answer[:300])


def report_started(port, n):
    c = Client(port)
    for i in range(n):
        body = urllib.parse.urlencode({"computer_id": COMP, "computer_partition_id": "slappart%d" % i})
        status, answer = c.call("POST", "/startedComputerPartition", body,
                                {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, (status, answer[:300])


def timed(port, path, samples):
    c = Client(port)
    c.call("GET", path)  # warm: templates compiled, pages cached by SQLite
    times = []
    body = b""
    for _ in range(samples):
        t = time.perf_counter()
        status, body = c.call("GET", path)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, (path, status, body[:300])
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "slapos"))
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    port = free_port()
    (work / "slapos.cfg").write_text(
        "[slapos]\nmaster_url = http://127.0.0.1:%d\ncomputer_id = %s\n"
        "[slapproxy]\nhost = 127.0.0.1\nport = %d\ndatabase_uri = %s\n"
        % (port, COMP, port, work / "proxy.db"))
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen([args.bin, "proxy", "start", "--cfg", str(work / "slapos.cfg")],
                            cwd=work, stdout=open(work / "log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        n = args.instances
        t = time.monotonic()
        register(port, n)
        titles = ["instance-%05d" % i for i in range(n)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: request_range(port, titles[k::8]), range(8)))
        report_started(port, n)
        print("setup: %d partitions, %d instances requested and reported started in %.1f s"
              % (n, n, time.monotonic() - t))

        _, _, first = timed(port, "/instances", 1)
        rows = len(re.findall(rb"<tr data-title=", first))
        total = re.search(rb'<span id="total">(\d+)</span>', first).group(1).decode()
        assert int(total) == n, (total, n)
        next_url = html.unescape(re.search(rb'href="([^"]+)" rel="next"', first).group(1).decode())
        print("first page: %d rows of %s instances" % (rows, total))
        print("%-44s %9s %9s" % ("page", "median", "p95"))
        for label, path in [
            ("/instances (first page)", "/instances"),
            ("/instances next page", next_url),
            ("/instances?q=instance-0999 (search)", "/instances?q=instance-0999"),
            ("/instances?state=started", "/instances?state=started"),
            ("/instances?state=error (no match)", "/instances?state=error"),
            ("/computers/%s (%d partitions)" % (COMP, n), "/computers/" + COMP),
            ("/request (form)", "/request"),
        ]:
            median, p95, _ = timed(port, path, args.samples)
            print("%-44s %7.1f ms %7.1f ms" % (label, median, p95))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


if __name__ == "__main__":
    main()
