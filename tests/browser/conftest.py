"""A real `slapos up` (master, node, the hello release) for the dashboard's
browser tests, and Debian's Chromium driven by Playwright."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Screenshots of the main pages; the ones committed in docs/screenshots are
# refreshed with SLAPOS_SCREENSHOTS=docs/screenshots bash tests/browser/run.sh
SCREENSHOTS = os.path.abspath(
    os.environ.get("SLAPOS_SCREENSHOTS", os.path.join(REPO, "target", "screenshots")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout, proc, log):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapos up exited: {open(log).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout}s: {open(log).read()[-3000:]}")


class Up:
    def __init__(self, base, cfg, data, log):
        self.base, self.cfg, self.data, self.log = base, cfg, data, log

    def cli(self, *args):
        out = subprocess.run(
            [os.environ["SLAPOS_BIN"], *args, "--cfg", self.cfg],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def hello_url(self):
        out = subprocess.run(
            [os.environ["SLAPOS_BIN"], "catalog", "list", "--data-dir", self.data],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        for line in out.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == "hello":
                return next(f for f in fields if "://" in f)
        raise AssertionError("hello is not in `slapos catalog list`")


@pytest.fixture(scope="session")
def up():
    binary = os.environ.get("SLAPOS_BIN", os.path.join(REPO, "target", "debug", "slapos"))
    os.environ["SLAPOS_BIN"] = binary
    data = tempfile.mkdtemp(prefix="slapos-browser-")
    os.chmod(data, 0o755)
    port = free_port()
    log = os.path.join(data, "up.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [binary, "up", "--data-dir", data, "--port", str(port),
             "--port-base", str(30000 + port % 20000), "--partitions", "4", "--supply", "hello"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/api/v1", 60, proc, log)
        yield Up(base, os.path.join(data, "slapos.cfg"), data, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    executable = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, up):
    context = browser.new_context(base_url=up.base, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page, name):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)
