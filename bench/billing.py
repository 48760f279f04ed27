#!/usr/bin/env python3
"""Accounting benchmark: how fast the master takes usage reports into its
ledger, and how long issuing a month's invoices takes over a large ledger.

    python3 bench/billing.py [--partitions 100] [--reports 200] [--bin target/release/slapos]

Starts `slapos master` (no accounts) on a fresh SQLite database, registers
one computer with `--partitions` partitions, requests one instance on each,
then:

* **ingest**: a node's reports, `--reports` of them, each with one record
  per partition (the JSON of `POST /api/v1/computers/{ref}/usage`), sent one
  after another as a node does; prints records per second;
* **resend**: the same reports again (all already recorded: the idempotent
  path);
* **useComputer**: the same amount as TioXML journals over the legacy
  protocol;
* **issue**: `slapos master invoice issue` for the month over every record
  (one invoice per owner, lines per tree and resource), timed as a command.

The reference proxy has no usage ledger (`useComputer` is not a route of
slapos.core 1.26.1's proxy), so there is nothing to run beside it.
"""

import argparse
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
COMP = "COMP-BILL"
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


def register(client, n):
    parts = "".join(
        "<dictionary id='p%d'><string>reference</string><string>slappart%d</string>"
        "<string>address_list</string><list id='a%d'/></dictionary>" % (i, i, i)
        for i in range(n)
    )
    xml = (
        "<marshal><dictionary id='i1'><string>reference</string><string>%s</string>"
        "<string>address</string><string>10.0.0.1</string><string>netmask</string>"
        "<string>255.255.255.0</string><string>partition_list</string>"
        "<list id='i2'>%s</list></dictionary></marshal>" % (COMP, parts)
    )
    from urllib.parse import urlencode

    status, body = client.call(
        "POST",
        "/loadComputerConfigurationFromXML",
        urlencode({"computer_id": COMP, "xml": xml}),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, body


def report(n, partitions, start):
    period = 60_000_000
    return {
        "report_id": "bench-%d" % n,
        "records": [
            {
                "partition": "slappart%d" % p,
                "period_start": start + n * period,
                "period_end": start + (n + 1) * period,
                "cpu_micros": 1_234_567 + p,
                "memory_byte_seconds": 60 * 100_000_000,
                "disk_byte_seconds": 60 * 2_000_000_000,
                "running_seconds": 60,
            }
            for p in range(partitions)
        ],
    }


def tioxml(rep):
    out = ["<?xml version='1.0' encoding='utf-8'?><journal report_id='%s'>" % rep["report_id"]]
    for r in rep["records"]:
        out.append(
            "<transaction type='Sale Packing List' report_id='%s'><title>Resource consumptions</title>"
            "<reference>%s</reference><period start='%d' end='%d'/>"
            "<usage cpu_micros='%d' memory_byte_seconds='%d' disk_byte_seconds='%d' running_seconds='%d'/>"
            "</transaction>"
            % (
                rep["report_id"],
                r["partition"],
                r["period_start"],
                r["period_end"],
                r["cpu_micros"],
                r["memory_byte_seconds"],
                r["disk_byte_seconds"],
                r["running_seconds"],
            )
        )
    out.append("</journal>")
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--reports", type=int, default=200)
    ap.add_argument("--bin", default=os.environ.get("SLAPOS_BIN", str(REPO / "target/release/slapos")))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="slapos-bench-billing-")
    port = free_port()
    cfg = pathlib.Path(tmp) / "slapos.cfg"
    cfg.write_text(
        "[slapos]\nmaster_url = http://127.0.0.1:%d\n[slapmaster]\nhost = 127.0.0.1\nport = %d\n"
        "database_uri = %s/master.db\n" % (port, port, tmp)
    )
    master = subprocess.Popen(
        [args.bin, "master", "--cfg", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(pathlib.Path(tmp) / "master.log", "w"),
        start_new_session=True,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        client = Client(port)
        register(client, args.partitions)
        for p in range(args.partitions):
            status, body = client.call(
                "POST",
                "/api/v1/instances",
                json.dumps(
                    {"software_release": SR, "title": "bench-%d" % p, "sla": {"computer_guid": COMP}}
                ),
                {"Content-Type": "application/json"},
            )
            assert status == 200, body
        month_start = int(time.time() // 86400 * 86400 - 20 * 86400) * 1_000_000
        records = args.reports * args.partitions
        results = {}

        def ingest(label, path, encode, offset, expect_new):
            t0 = time.perf_counter()
            for n in range(args.reports):
                body, headers = encode(report(n + offset, args.partitions, month_start))
                status, answer = client.call("POST", path, body, headers)
                assert status == 200, answer
                if expect_new is not None and path.startswith("/api"):
                    got = json.loads(answer)
                    assert (got["recorded"] > 0) == expect_new, got
            seconds = time.perf_counter() - t0
            results[label] = (seconds, records / seconds)
            print("%-12s %7d records in %6.2f s: %9.0f records/s, %6.2f ms per report"
                  % (label, records, seconds, records / seconds, 1000 * seconds / args.reports))

        as_json = lambda rep: (json.dumps(rep), {"Content-Type": "application/json"})
        from urllib.parse import urlencode

        as_form = lambda rep: (
            urlencode({"computer_id": COMP, "use_string": tioxml(rep)}),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        usage_path = "/api/v1/computers/%s/usage" % COMP
        ingest("ingest", usage_path, as_json, 0, True)
        ingest("resend", usage_path, as_json, 0, False)
        ingest("useComputer", "/useComputer", as_form, args.reports, None)

        prices = pathlib.Path(tmp) / "prices.toml"
        prices.write_text(
            'name = "bench"\ncurrency = "EUR"\nvalid_from = "2020-01-01"\n'
            '[[price]]\nresource = "cpu_hour"\nunit_price = "0.05"\n'
            '[[price]]\nresource = "instance_hour"\nunit_price = "0.01"\n'
            '[[price]]\nresource = "memory_gb_hour"\nunit_price = "0.002"\n'
            '[[price]]\nresource = "disk_gb_month"\nunit_price = "0.10"\n'
        )
        subprocess.run([args.bin, "master", "price-list", "add", str(prices), "--cfg", str(cfg)],
                       check=True, stdout=subprocess.DEVNULL)
        month = time.strftime("%Y-%m", time.gmtime())
        t0 = time.perf_counter()
        out = subprocess.run([args.bin, "master", "invoice", "issue", "--period", month, "--cfg", str(cfg)],
                             check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - t0
        print("%-12s %7d records in %6.2f s (%s)" % ("issue", 2 * records, seconds, out.strip()))
    finally:
        os.killpg(master.pid, signal.SIGTERM)
        master.wait(timeout=30)


if __name__ == "__main__":
    main()
