"""The dashboard of a master with accounts: a user logs in with an API token
and sees their usage as charts and their invoice. Usage goes straight into
the master's SQLite ledger (what nodes' reports would record)."""

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from conftest import free_port, screenshot, wait_http

PRICES = """
name = "browser 2026"
currency = "EUR"
valid_from = "2026-01-01"

[[price]]
resource = "instance_hour"
unit_price = "0.01"

[[price]]
resource = "cpu_hour"
unit_price = "0.05"

[[price]]
resource = "memory_gb_hour"
unit_price = "0.002"

[[price]]
resource = "disk_gb_month"
unit_price = "0.10"
"""


class Master:
    def __init__(self, base, cfg, database):
        self.base, self.cfg, self.database = base, cfg, database

    def cli(self, *args):
        out = subprocess.run(
            [os.environ["SLAPOS_BIN"], "master", *args, "--cfg", self.cfg],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout


@pytest.fixture(scope="module")
def master():
    binary = os.environ.get("SLAPOS_BIN") or os.path.join(
        os.path.dirname(__file__), "..", "..", "target", "debug", "slapos")
    os.environ["SLAPOS_BIN"] = binary
    data = tempfile.mkdtemp(prefix="slapos-browser-accounts-")
    port = free_port()
    database = os.path.join(data, "master.db")
    cfg = os.path.join(data, "slapos.cfg")
    with open(cfg, "w") as f:
        f.write(f"[slapos]\nmaster_url = http://127.0.0.1:{port}\n"
                f"[slapmaster]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {database}\n"
                "authentication = token\n")
    log = os.path.join(data, "master.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "master", "--cfg", cfg],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/api/v1", 30, proc, log)
        yield Master(base, cfg, database)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def post(url, body, content_type, token=None):
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": content_type})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.read().decode()


def test_login_then_usage_chart_and_invoice(browser, master):
    token = master.cli("user", "add", "carol").strip()
    # With accounts on, only a computer's node (its certificate, over HTTPS)
    # registers it: this plain-HTTP master gets its computer in the database.
    with sqlite3.connect(master.database) as db:
        computer = db.execute(
            "INSERT INTO computer (reference, address, netmask, created_at)"
            " VALUES ('COMP-B', '10.0.0.1', '255.255.255.0', ?) RETURNING id",
            (int(time.time() * 1e6),)).fetchone()[0]
        for n in range(2):
            db.execute("INSERT INTO partition (computer_id, reference) VALUES (?, ?)",
                       (computer, f"slappart{n}"))
    instance = json.loads(post(
        master.base + "/api/v1/instances",
        json.dumps({"software_release": "https://lab.example.invalid/web/software.cfg",
                    "title": "carol-web", "sla": {"computer_guid": "COMP-B"}}),
        "application/json", token))["id"]
    # Five hours of usage on 2026-11-03, half a CPU, 2 GB of memory, 10 GB of disk.
    with sqlite3.connect(master.database) as db:
        user = db.execute("SELECT id FROM \"user\" WHERE name = 'carol'").fetchone()[0]
        computer = db.execute("SELECT id FROM computer WHERE reference = 'COMP-B'").fetchone()[0]
        # 2026-11-03 10:00 UTC, in microseconds.
        start = 1_793_700_000 // 86400 * 86400 * 1_000_000 + 10 * 3_600_000_000
        for hour in range(5):
            s = start + hour * 3_600_000_000
            db.execute(
                "INSERT INTO usage_record (computer_id, report_id, partition_reference, instance_id,"
                " user_id, tree_id, software_release, software_type, period_start, period_end,"
                " cpu_micros, memory_byte_seconds, disk_byte_seconds, running_seconds, received_at)"
                " VALUES (?, ?, 'slappart0', ?, ?, ?, 'https://lab.example.invalid/web/software.cfg',"
                " 'default', ?, ?, ?, ?, ?, 3600, ?)",
                (computer, f"r{hour}", instance, user, instance, s, s + 3_600_000_000,
                 1_800_000_000 * (hour + 1), 2_000_000_000 * 3600, 10_000_000_000 * 3600,
                 int(time.time() * 1e6)))
    prices = os.path.join(os.path.dirname(master.database), "prices.toml")
    with open(prices, "w") as f:
        f.write(PRICES)
    master.cli("price-list", "add", prices)
    period = time.strftime("%Y-%m", time.gmtime(start / 1e6))
    master.cli("invoice", "issue", "--period", period)

    context = browser.new_context(base_url=master.base, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        # Not logged in: the login page; a wrong token is refused.
        page.goto("/instances")
        expect(page.locator("h1")).to_have_text("Log in")
        page.fill("#token", "slapos_wrong")
        page.click("#login button")
        expect(page.locator("#login-error")).to_contain_text("unknown or revoked")
        page.fill("#token", token)
        page.click("#login button")
        expect(page.locator("h1")).to_have_text("Instances")
        expect(page.locator("#user")).to_have_text("carol")
        expect(page.locator("#instances")).to_contain_text("carol-web")

        # The instance's usage, per hour: five bars in each chart.
        page.click("text=carol-web")
        page.click("#usage-link")
        expect(page.locator("h1")).to_have_text("Usage of carol-web")
        day = time.strftime("%Y-%m-%d", time.gmtime(start / 1e6))
        page.fill('input[name="from"]', day)
        page.locator("select[name=bucket]").select_option("hour")
        page.click("text=Show")
        expect(page.locator("#chart-cpu rect.bar")).to_have_count(5)
        expect(page.locator("#chart-cpu")).to_contain_text("7.5 CPU-hours in all")
        box = page.locator("#chart-cpu svg").bounding_box()
        assert box["width"] > 200 and box["height"] > 50, box
        screenshot(page, "usage")

        # The invoice of that month, with its lines and a CSV.
        page.click("nav >> text=Invoices")
        page.locator("#invoices a", has_text=f"INV-{period}").click()
        expect(page.locator("#lines")).to_contain_text("cpu_hour")
        expect(page.locator("#lines")).to_contain_text("carol-web")
        expect(page.locator("#csv")).to_be_visible()
        screenshot(page, "invoice")

        page.click("text=Log out")
        expect(page.locator("h1")).to_have_text("Log in")
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
