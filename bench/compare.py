#!/usr/bin/env python3
"""Side-by-side benchmark: the reference SlapOS proxy (slapos.core 1.26.1,
`slapos proxy start`) against ours (`target/release/slapos proxy start`).

Run it with the reference venv's python (it uses the real `slapos.slap`
client and `slapos.util.dumps`):

    .venv-ref/bin/python bench/compare.py [--quick] [--only ours|reference]

Every scenario starts a fresh master (fresh SQLite database in a temporary
directory, free port), measures, then stops it. See bench/README.md for what
each figure means. Nothing here changes either server's code; the reference is
started through the normal `slapos` CLI entry point, with one setting lifted:
Flask's 500 kB form limit (MAX_FORM_MEMORY_SIZE), without which the reference
refuses (413) a loadComputerConfigurationFromXML of more than ~1,000
partitions (and registering in chunks is impossible: every call replaces the
computer's whole partition list).
"""

import argparse
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.parse

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REF_VENV = pathlib.Path(os.environ.get("SLAPOS_REF_VENV", REPO / ".venv-ref"))
DEFAULT_OURS_BIN = pathlib.Path(os.environ.get("SLAPOS_BIN") or REPO / "target" / "release" / "slapos")

# Everything stays on the loopback: never go through an HTTP proxy.
for _name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_name, None)
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost,::1"
os.environ.pop("SLAPGRID_INSTANCE_ROOT", None)

from slapos.util import dumps  # noqa: E402  (reference venv)
import slapos.slap  # noqa: E402

COMP = "COMP-BENCH"
SR = "https://lab.example.invalid/nexedi/slapos/raw/1.0.400/software/demo/software.cfg"
SOFTWARE_TYPE = "demo-type"
# The instance parameters of fixture 013 (non-ASCII, XML-special, int, "").
PARAMS = {
    "title": "Grüße – Привет – 日本語 ☃",
    "markup": "<b class=\"x\">Tom & Jerry's</b> > 1",
    "port": 8080,
    "empty": "",
    "plain": "hello world",
}
START_TIMEOUT = 60.0
BUSY_RE = re.compile(rb"<string>_need_modification</string><int>1</int>")
TITLE_RE = re.compile(rb"<string>instance_title</string><string>([^<]*)</string>")
TIMESTAMP_RE = re.compile(rb"(<string>timestamp</string><string>)[0-9.e+-]+(</string>)")
GFCI_BODIES = {}  # kind -> node view of the gfci scenario, timestamps blanked

# Reference launcher: the `slapos` console script, with Flask's form size limit
# lifted so that one loadComputerConfigurationFromXML can carry 20,000
# partitions (the request handling itself is untouched).
REF_LAUNCHER = (
    "import sys\n"
    "import slapos.proxy.views as views\n"
    "views.app.config['MAX_FORM_MEMORY_SIZE'] = None\n"
    "from slapos.cli.entry import main\n"
    "sys.argv[0] = 'slapos'\n"
    "sys.exit(main())\n"
)

QUICK = dict(
    n_requests=40, n_concurrent=40, wrk_partitions=1000, wrk_duration=3,
    gfci_partitions=50, gfci_samples=60, scale_small=300, scale_large=1000,
    scale_requests=100, rss_partitions=500, rss_batch=250, rss_timeout=40,
)
FULL = dict(
    n_requests=300, n_concurrent=300, wrk_partitions=20000, wrk_duration=10,
    gfci_partitions=200, gfci_samples=300, scale_small=3000, scale_large=10000,
    scale_requests=1000, rss_partitions=10000, rss_batch=1000, rss_timeout=900,
)
METRICS = ("slap1", "slap8", "wrk", "gfci", "scale", "rss")


def log(msg):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# Servers

LIVE_SERVERS = []


class ServerError(RuntimeError):
    pass


class Server:
    def __init__(self, kind, workdir, args):
        self.kind = kind
        self.args = args
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="%s-" % kind, dir=workdir))
        self.cfg = self.workdir / "slapos.cfg"
        self.db = self.workdir / "proxy.db"
        self.log_path = self.workdir / "master.log"
        self.process = None
        self.port = None
        self.url = None

    def command(self):
        if self.kind == "reference":
            py = self.args.ref_venv / "bin" / "python"
            return [str(py), "-c", REF_LAUNCHER, "proxy", "start", "--cfg", str(self.cfg)]
        return [str(self.args.slapos_bin), "proxy", "start", "--cfg", str(self.cfg)]

    def start(self):
        last = None
        for _ in range(3):
            self.port = free_port()
            self.url = "http://127.0.0.1:%d" % self.port
            self.cfg.write_text(
                "[slapos]\nmaster_url = %s\ncomputer_id = %s\n"
                "[slapproxy]\nhost = 127.0.0.1\nport = %d\ndatabase_uri = %s\n"
                % (self.url, COMP, self.port, self.db))
            try:
                self._start_once()
                return self
            except ServerError as e:
                last = e
                self.stop()
        raise last

    def _start_once(self):
        logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.process = subprocess.Popen(
            self.command(), cwd=str(self.workdir), stdin=subprocess.DEVNULL,
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        logf.close()
        LIVE_SERVERS.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError("%s master exited with %s at start:\n%s"
                                  % (self.kind, self.process.returncode, self.log_tail()))
            try:
                status, _ = http_get(self.port, "/getRunId", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerError("%s master not answering GET /getRunId after %ss:\n%s"
                          % (self.kind, START_TIMEOUT, self.log_tail()))

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        if self in LIVE_SERVERS:
            LIVE_SERVERS.remove(self)

    def log_tail(self, n=4000):
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode("utf-8", "replace")

    def rss_kb(self):
        """(VmRSS, VmHWM) in kB summed over the master and its descendants."""
        rss = hwm = 0
        for pid in process_tree(self.process.pid):
            status = read_status(pid)
            rss += status.get("VmRSS", 0)
            hwm += status.get("VmHWM", 0)
        return rss, hwm

    def cpu_seconds(self):
        total = 0.0
        tck = os.sysconf("SC_CLK_TCK")
        for pid in process_tree(self.process.pid):
            try:
                fields = pathlib.Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tck
            except (OSError, IndexError, ValueError):
                pass
        return total


def process_tree(pid):
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        try:
            for task in os.listdir("/proc/%d/task" % p):
                try:
                    kids = pathlib.Path("/proc/%d/task/%s/children" % (p, task)).read_text().split()
                except OSError:
                    continue
                out.extend(int(k) for k in kids if int(k) not in out)
        except OSError:
            pass
    return out


def read_status(pid):
    res = {}
    try:
        for line in pathlib.Path("/proc/%d/status" % pid).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                res[key] = int(value.split()[0])
    except OSError:
        pass
    return res


def error_excerpt(server, size=3000):
    """The last error the master logged (Python traceback, Rust error/panic)."""
    text = server.log_tail(400000)
    for marker in ("Traceback (most recent call last)", "panicked", " ERROR "):
        i = text.rfind(marker)
        if i >= 0:
            start = text.rfind("\n", 0, max(0, i - 300)) + 1 if marker != " ERROR " else text.rfind("\n", 0, i) + 1
            return text[start:start + size]
    return None


def stop_all():
    for server in list(LIVE_SERVERS):
        try:
            server.stop()
        except Exception as e:  # pragma: no cover
            log("could not stop %s master (pid %s): %s" % (server.kind, server.process.pid, e))


# ---------------------------------------------------------------------------
# HTTP helpers

def http_get(port, path, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_post_form(port, path, fields, timeout=3600):
    body = urllib.parse.urlencode(fields).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={
            "Content-type": "application/x-www-form-urlencoded",
            "User-agent": "slapos.core/1.26.1", "Accept": "*/*"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def computer_payload(n):
    """loadComputerConfigurationFromXML payload (doc section 6.3) for n partitions."""
    partitions = []
    for i in range(n):
        partitions.append({
            "reference": "slappart%d" % i,
            "address_list": [
                {"addr": "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255),
                 "netmask": "255.0.0.0"},
                {"addr": "2001:db8:bench::%x" % (i + 1), "netmask": "ffff:ffff:ffff::"},
            ],
            "tap": {"name": "slaptap%d" % i},
        })
    return {"reference": COMP, "address": "10.0.0.1", "netmask": "255.0.0.0",
            "partition_list": partitions}


def register(server, n):
    """Registers COMP with n partitions in one call; returns seconds taken."""
    xml = dumps(computer_payload(n))
    t = time.monotonic()
    status, body = http_post_form(server.port, "/loadComputerConfigurationFromXML", {"xml": xml})
    took = time.monotonic() - t
    if status != 200:
        raise ServerError("%s: loadComputerConfigurationFromXML of %d partitions -> %s %s\n%s"
                          % (server.kind, n, status, body[:500], server.log_tail()))
    log("  %s: registered %d partitions in %.1f s (payload %.1f MB)"
        % (server.kind, n, took, len(xml) / 1e6))
    return took


def request_form(title, params=PARAMS):
    """Form of an OpenOrder request, field order and encoding as in fixture 013."""
    return [
        ("software_release", SR),
        ("partition_reference", title),
        ("partition_parameter_xml", dumps(params)),
        ("filter_xml", dumps({"computer_guid": COMP})),
        ("software_type", SOFTWARE_TYPE),
        ("state", dumps(None)),
        ("shared_xml", dumps(False)),
    ]


def node_view(server, timeout=600):
    status, body = http_get(server.port, "/getFullComputerInformation?computer_id=%s" % COMP,
                            timeout=timeout)
    if status != 200:
        raise ServerError("%s: getFullComputerInformation -> %s %s" % (server.kind, status, body[:300]))
    return body


def busy_summary(server, via_db=False):
    """How many partitions are busy and how many distinct instance titles they
    hold, as the node sees them (getFullComputerInformation), or, for a big
    reference database, straight from its SQLite file (the reference's node
    view takes ~1 s per 1,000 busy partitions and scans every network row
    per partition: 20,000 partitions would take minutes)."""
    if via_db:
        con = sqlite3.connect("file:%s?mode=ro" % server.db, uri=True, timeout=30)
        try:
            busy, titles = con.execute(
                "SELECT count(*), count(DISTINCT partition_reference) FROM partition18 "
                "WHERE computer_reference=? AND slap_state='busy'", (COMP,)).fetchone()
        finally:
            con.close()
        return {"busy": busy, "distinct_titles": titles, "source": "database"}
    body = node_view(server)
    return {"busy": len(BUSY_RE.findall(body)),
            "distinct_titles": len(set(TITLE_RE.findall(body))),
            "source": "getFullComputerInformation"}


# ---------------------------------------------------------------------------
# 1 & 2: the real slapos.slap client

def _open_order(url):
    slap = slapos.slap.slap()
    slap.initializeConnection(url)
    order = slap.registerOpenOrder()
    return order


def _do_slap_requests(order, titles):
    out = []
    for title in titles:
        try:
            part = order.request(SR, title, partition_parameter_kw=dict(PARAMS),
                                 software_type=SOFTWARE_TYPE,
                                 filter_kw={"computer_guid": COMP})
            out.append((title, part.getId(), None))
        except Exception as e:
            out.append((title, None, "%s: %s" % (type(e).__name__, str(e)[:200])))
    return out


def slap_worker(url, titles, barrier, queue):
    try:
        order = _open_order(url)
        barrier.wait(120)
        t0 = time.monotonic()
        res = _do_slap_requests(order, titles)
        t1 = time.monotonic()
        queue.put((t0, t1, res))
    except BaseException as e:
        queue.put((None, None, [(None, None, "worker failed: %r" % e)]))


def summarize_answers(results):
    ok = [r for r in results if r[2] is None]
    errors = [r[2] for r in results if r[2] is not None]
    parts = [r[1] for r in ok]
    return {
        "requests": len(results), "ok": len(ok), "errors": len(errors),
        "distinct_partitions": len(set(parts)),
        "duplicate_answers": len(parts) - len(set(parts)),
        "first_errors": sorted(set(errors))[:5],
    }


def bench_slap1(kind, args):
    n = args.n_requests
    server = Server(kind, args.tmp, args).start()
    try:
        register(server, n + 8)
        order = _open_order(server.url)
        titles = ["slap1-%d" % i for i in range(n)]
        cpu0 = server.cpu_seconds()
        t = time.monotonic()
        res = _do_slap_requests(order, titles)
        elapsed = time.monotonic() - t
        out = summarize_answers(res)
        out.update(elapsed_s=round(elapsed, 3), rps=round(out["ok"] / elapsed, 1),
                   server_cpu_s=round(server.cpu_seconds() - cpu0, 2))
        out["node_view"] = busy_summary(server)
        return out
    finally:
        server.stop()


def bench_slap8(kind, args):
    n, c = args.n_concurrent, args.concurrency
    server = Server(kind, args.tmp, args).start()
    try:
        register(server, n + 8)
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(c)
        queue = ctx.Queue()
        chunks = [["slap8-%d-%d" % (w, i) for i in range(w, n, c)] for w in range(c)]
        procs = [ctx.Process(target=slap_worker, args=(server.url, chunks[w], barrier, queue), daemon=True)
                 for w in range(c)]
        cpu0 = server.cpu_seconds()
        for p in procs:
            p.start()
        got = []
        try:
            for _ in procs:
                got.append(queue.get(timeout=max(600, n * 2)))
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        t0 = min(g[0] for g in got if g[0] is not None)
        t1 = max(g[1] for g in got if g[1] is not None)
        res = [r for g in got for r in g[2]]
        out = summarize_answers(res)
        elapsed = t1 - t0
        out.update(clients=c, elapsed_s=round(elapsed, 3), rps=round(out["ok"] / elapsed, 1),
                   server_cpu_s=round(server.cpu_seconds() - cpu0, 2))
        out["node_view"] = busy_summary(server)
        if out["duplicate_answers"]:
            dup = {}
            for title, part, err in res:
                if err is None:
                    dup.setdefault(part, []).append(title)
            out["duplicate_examples"] = {p: t for p, t in list(
                (p, t) for p, t in dup.items() if len(t) > 1)[:3]}
        return out
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# 3, 5, 6: wrk with a Lua script posting requestComputerPartition forms

LUA_TEMPLATE = r"""
-- generated by bench/compare.py
local ffi = require("ffi")
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local PREFIX = [==[%(prefix)s]==]
local SUFFIX = [==[%(suffix)s]==]
local TAG = "%(tag)s"
local HEADERS = {
  ["Content-type"] = "application/x-www-form-urlencoded",
  ["User-agent"] = "slapos.core/1.26.1",
  ["Accept"] = "*/*",
}
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  quota = tonumber(args[1])
  sent, ok, nf, other = 0, 0, 0, 0
  t0, t1 = 0, 0
  stopped = false
  first_other, first_nf = "", ""
end

function request()
  if t0 == 0 then t0 = now() end
  sent = sent + 1
  return wrk.format("POST", "/requestComputerPartition", HEADERS,
                    PREFIX .. TAG .. "-" .. tid .. "-" .. sent .. SUFFIX)
end

function response(status, headers, body)
  t1 = now()
  if status >= 200 and status < 300 then
    ok = ok + 1
  elseif status == 404 then
    nf = nf + 1
    if first_nf == "" then first_nf = string.sub(body or "", 1, 300) end
  else
    other = other + 1
    if first_other == "" then first_other = status .. " " .. string.sub(body or "", 1, 300) end
  end
  if ok + nf + other >= quota and not stopped then
    -- tell compare.py this thread is done: it interrupts wrk (whose main
    -- thread would otherwise sleep for the whole -d duration)
    stopped = true
    io.write("BENCHQUOTA\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("BENCHTHREAD %%d %%d %%d %%d %%d %%.6f %%.6f\n",
      t:get("tid"), t:get("sent"), t:get("ok"), t:get("nf"), t:get("other"),
      t:get("t0"), t:get("t1")))
    local fo = t:get("first_other")
    if fo ~= "" then io.write("BENCHOTHER " .. string.gsub(fo, "\n", " ") .. "\n") end
    local fn = t:get("first_nf")
    if fn ~= "" then io.write("BENCHNOTFOUND " .. string.gsub(fn, "\n", " ") .. "\n") end
  end
  io.write(string.format("BENCHLAT %%.3f %%.3f %%.3f %%.3f\n",
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.mean / 1000))
end
"""


def lua_script(path, tag):
    """The body is the url-encoded form of fixture 013 (same fields, same order,
    same parameters), the title being <tag>-<thread>-<counter>."""
    form = request_form("\x00")
    encoded = urllib.parse.urlencode(form)
    marker = urllib.parse.urlencode([("partition_reference", "\x00")])
    prefix, suffix = encoded.split(marker)
    prefix += "partition_reference="
    assert "]==]" not in prefix + suffix
    path.write_text(LUA_TEMPLATE % dict(prefix=prefix, suffix=suffix, tag=tag))


def _run_wrk_process(cmd, threads, timeout):
    """Runs wrk; once every thread has reached its quota, SIGINT makes wrk
    stop sleeping and print its summary at once."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines = []
    finished = 0
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("BENCHQUOTA"):
                finished += 1
                if finished >= threads and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                continue
            lines.append(line)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    if proc.returncode not in (0, -signal.SIGINT):
        raise ServerError("wrk exited with %s:\n%s" % (proc.returncode, out[-3000:]))
    return out


def run_wrk(server, args, total, duration, tag, threads=None, conns=None):
    """Posts up to `total` requests (fresh titles) with wrk, for at most
    `duration` s; returns counts and the throughput measured by the script
    (first request sent -> last answer received, over all threads)."""
    threads = threads or args.wrk_threads
    conns = conns or args.wrk_conns
    script = server.workdir / ("wrk-%s.lua" % tag)
    lua_script(script, tag)
    quota = max(1, total // threads)
    cmd = [args.wrk, "-t%d" % threads, "-c%d" % conns, "-d%ds" % max(1, int(duration)),
           "--timeout", "120s", "--latency", "-s", str(script), server.url + "/", "--", str(quota)]
    out = _run_wrk_process(cmd, threads, duration + 180)
    if "BENCHTHREAD" not in out:
        raise ServerError("wrk failed:\n%s" % out[-3000:])
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("BENCHTHREAD")]
    sent = sum(int(r[1]) for r in rows)
    ok = sum(int(r[2]) for r in rows)
    nf = sum(int(r[3]) for r in rows)
    other = sum(int(r[4]) for r in rows)
    t0 = min(float(r[5]) for r in rows if float(r[5]) > 0)
    t1 = max(float(r[6]) for r in rows)
    elapsed = max(t1 - t0, 1e-9)
    lat = [line.split()[1:] for line in out.splitlines() if line.startswith("BENCHLAT")][0]
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res = {
        "sent": sent, "ok_2xx": ok, "404": nf, "other_non_2xx": other,
        "elapsed_s": round(elapsed, 3), "rps": round(ok / elapsed, 1),
        "latency_ms": {"p50": float(lat[0]), "p95": float(lat[1]), "p99": float(lat[2]),
                       "mean": float(lat[3])},
        "socket_errors": ({k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                                    sock.groups())} if sock else {}),
    }
    for kind in ("BENCHOTHER", "BENCHNOTFOUND"):
        seen = [line[len(kind) + 1:] for line in out.splitlines() if line.startswith(kind)]
        if seen:
            res["first_" + kind[5:].lower()] = seen[0][:300]
    return res


def bench_wrk(kind, args):
    p = args.wrk_partitions
    server = Server(kind, args.tmp, args).start()
    try:
        reg = register(server, p)
        margin = args.wrk_conns * 2
        cpu0 = server.cpu_seconds()
        res = run_wrk(server, args, p - margin, args.wrk_duration, "wrk")
        res["server_cpu_s"] = round(server.cpu_seconds() - cpu0, 2)
        if res["other_non_2xx"]:
            res["error_log"] = error_excerpt(server)
        res["partitions"] = p
        res["register_s"] = round(reg, 2)
        res["alive_after"] = server.alive()
        if server.alive():
            res["node_view"] = busy_summary(server, via_db=(kind == "reference" and p > 2000))
        return res
    finally:
        server.stop()


def bench_scale(kind, args):
    """R fresh requests (wrk, 8 connections) on a computer of `scale_small`
    and of `scale_large` partitions, each on a fresh master, after a warm-up
    of `scale_warmup` requests (the first commits after a big registration
    pay for its aftermath, e.g. a WAL checkpoint); small and large runs
    alternate, `scale_repeat` times each; medians reported."""
    sizes = (("small", args.scale_small), ("large", args.scale_large))
    runs = {label: [] for label, _ in sizes}
    for rep in range(args.scale_repeat):
        for label, p in sizes:
            server = Server(kind, args.tmp, args).start()
            try:
                reg = register(server, p)
                margin = args.wrk_conns * 2
                warm = min(args.scale_warmup, max(0, p // 10))
                if warm:
                    run_wrk(server, args, warm, args.scale_timeout, "warmup")
                r = min(args.scale_requests, p - warm - 2 * margin)
                res = run_wrk(server, args, r, args.scale_timeout, "scale")
                res["register_s"] = round(reg, 2)
                res["warmup_requests"] = warm
                # then one client, one request at a time: the service time
                seq = min(args.scale_sequential, p - warm - r - 4 * margin)
                if seq > 0:
                    sres = run_wrk(server, args, seq, args.scale_timeout, "seq", threads=1, conns=1)
                    res["sequential"] = {"requests": sres["ok_2xx"], "rps": sres["rps"],
                                         "latency_ms": sres["latency_ms"],
                                         "non_2xx": sres["404"] + sres["other_non_2xx"]}
                runs[label].append(res)
            finally:
                server.stop()
            log("  %s: %d partitions, run %d: %.1f requests/s, p50 %.2f ms, p95 %.2f ms "
                "(%d ok, %d 404, %d other); one client: p50 %s ms"
                % (kind, p, rep + 1, res["rps"], res["latency_ms"]["p50"], res["latency_ms"]["p95"],
                   res["ok_2xx"], res["404"], res["other_non_2xx"],
                   res.get("sequential", {}).get("latency_ms", {}).get("p50")))
    out = {}
    for label, p in sizes:
        rs = runs[label]
        out[label] = {
            "partitions": p, "requests": rs[0]["ok_2xx"],
            "rps": round(statistics.median(r["rps"] for r in rs), 1),
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in rs), 3),
            "p95_ms": round(statistics.median(r["latency_ms"]["p95"] for r in rs), 3),
            "non_2xx": sum(r["404"] + r["other_non_2xx"] + r.get("sequential", {}).get("non_2xx", 0)
                           for r in rs),
            "runs": rs,
        }
        seq = [r["sequential"]["latency_ms"]["p50"] for r in rs if "sequential" in r]
        if seq:
            out[label]["seq_p50_ms"] = round(statistics.median(seq), 3)
    small, large = out["small"], out["large"]
    out["slowdown_pct"] = (round((small["rps"] - large["rps"]) / small["rps"] * 100, 1)
                           if small["rps"] else None)
    out["p50_slowdown_pct"] = (round((large["p50_ms"] - small["p50_ms"]) / small["p50_ms"] * 100, 1)
                               if small["p50_ms"] else None)
    if small.get("seq_p50_ms") and large.get("seq_p50_ms"):
        out["seq_p50_slowdown_pct"] = round(
            (large["seq_p50_ms"] - small["seq_p50_ms"]) / small["seq_p50_ms"] * 100, 1)
    return out


def bench_rss(kind, args):
    p = args.rss_partitions
    server = Server(kind, args.tmp, args).start()
    try:
        out = {"partitions": p, "rss_start_kb": server.rss_kb()[0]}
        out["register_s"] = round(register(server, p), 2)
        out["rss_registered_kb"] = server.rss_kb()[0]
        # Fill: batches of fresh requests until the master answers 404 (no
        # free partition left) or the time cap. Under concurrency the
        # reference hands some partitions out twice, so more requests than
        # partitions may be needed: after p requests, go on in small batches.
        deadline = time.monotonic() + args.rss_timeout
        done = 0
        batches = []
        capped = False
        full = False
        t_start = time.monotonic()
        while not full:
            left = deadline - time.monotonic()
            if left < 1:
                capped = True
                break
            if done + args.rss_batch <= p:
                want = args.rss_batch
            elif kind == "reference":
                # it hands out duplicates: ask its database how many are left
                busy = busy_summary(server, via_db=True)["busy"]
                want = max(10, min(args.rss_batch, p - busy))
            else:
                # no node view here: it would inflate the RSS being measured
                want = max(20, min(args.rss_batch, p - done))
            res = run_wrk(server, args, want, left, "rss%d" % len(batches))
            batches.append({"ok": res["ok_2xx"], "rps": res["rps"], "404": res["404"],
                            "other": res["other_non_2xx"], "elapsed_s": res["elapsed_s"]})
            done += res["ok_2xx"]
            if res["other_non_2xx"]:
                # the reference sometimes answers 500 under load (see the
                # excerpt): note it and go on, unless it keeps failing
                out["fill_other_errors"] = out.get("fill_other_errors", 0) + res["other_non_2xx"]
                out.setdefault("fill_first_error", res.get("first_other"))
                out.setdefault("fill_error_log", error_excerpt(server))
                if out["fill_other_errors"] > max(100, p // 20):
                    break
            if res["404"]:
                full = True
            elif res["ok_2xx"] < want and time.monotonic() >= deadline - 1:
                capped = True
        out["fill_s"] = round(time.monotonic() - t_start, 1)
        out["fill_requests_ok"] = done
        out["fill_capped"] = capped
        out["fill_reached_404"] = full
        out["fill_batches"] = batches
        time.sleep(1)
        rss, hwm = server.rss_kb()
        out["rss_kb"] = rss
        out["rss_peak_kb"] = hwm
        # Then what a node polling this computer costs: one getFullComputerInformation.
        t = time.monotonic()
        try:
            body = node_view(server, timeout=args.rss_gfci_timeout)
            out["gfci_s"] = round(time.monotonic() - t, 3)
            out["gfci_body_bytes"] = len(body)
            out["node_view"] = {"busy": len(BUSY_RE.findall(body)),
                                "distinct_titles": len(set(TITLE_RE.findall(body))),
                                "source": "getFullComputerInformation"}
            del body
        except (OSError, ServerError) as e:
            out["gfci_error"] = "%s after %.0f s" % (e, time.monotonic() - t)
            out["node_view"] = (busy_summary(server, via_db=True) if kind == "reference"
                                else {"busy": None})
        time.sleep(1)
        out["rss_after_gfci_kb"], out["rss_peak_after_gfci_kb"] = server.rss_kb()
        return out
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# 4: getFullComputerInformation latency

def bench_gfci(kind, args):
    p = args.gfci_partitions
    server = Server(kind, args.tmp, args).start()
    try:
        register(server, p)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        headers = {"Content-type": "application/x-www-form-urlencoded",
                   "User-agent": "slapos.core/1.26.1", "Accept": "*/*"}
        for i in range(p):
            params = {"index": i, "name": "instance-%d" % i, "size": str(10 + i % 7),
                      "note": "ça <va> & \"ok\""}
            body = urllib.parse.urlencode(request_form("gfci-%d" % i, params))
            conn.request("POST", "/requestComputerPartition", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise ServerError("%s: request gfci-%d -> %s %s" % (kind, i, resp.status, data[:300]))
        path = "/getFullComputerInformation?computer_id=%s" % COMP
        samples = []
        size = None
        for i in range(args.gfci_samples + 5):
            t = time.perf_counter()
            conn.request("GET", path, headers={"User-agent": "slapos.core/1.26.1", "Accept": "*/*"})
            resp = conn.getresponse()
            data = resp.read()
            dt = time.perf_counter() - t
            if resp.status != 200:
                raise ServerError("%s: getFullComputerInformation -> %s %s" % (kind, resp.status, data[:300]))
            if i >= 5:  # 5 warm-up calls
                samples.append(dt * 1000)
            size = len(data)
            keep_alive = not resp.will_close
        conn.close()
        GFCI_BODIES[kind] = TIMESTAMP_RE.sub(rb"\1T\2", data)
        samples.sort()
        return {
            "partitions": p, "samples": len(samples),
            "median_ms": round(statistics.median(samples), 3),
            "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 3),
            "mean_ms": round(statistics.fmean(samples), 3),
            "min_ms": round(samples[0], 3), "max_ms": round(samples[-1], 3),
            "body_bytes": size, "keep_alive": keep_alive,
            "busy_partitions_seen": len(BUSY_RE.findall(data)),
        }
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Report

ROWS = [
    # (label, metric, path, unit, higher_is_better)
    ("1. slap lib, 1 client: requests/s", "slap1", ("rps",), "req/s", True),
    ("1. slap lib, 1 client: master CPU per request", "slap1", ("@cpu",), "ms", False),
    ("2. slap lib, 8 clients: requests/s", "slap8", ("rps",), "req/s", True),
    ("2. slap lib, 8 clients: distinct partitions / ok", "slap8", ("@distinct",), "", None),
    ("3. wrk -t2 -c8 raw HTTP: requests/s (2xx)", "wrk", ("rps",), "req/s", True),
    ("3. wrk: master CPU per request", "wrk", ("@cpu",), "ms", False),
    ("3. wrk: non-2xx answers", "wrk", ("@non2xx",), "", None),
    ("3. wrk: busy partitions / 2xx answers", "wrk", ("@wrkbusy",), "", None),
    ("3. wrk: latency p50", "wrk", ("latency_ms", "p50"), "ms", False),
    ("4. getFullComputerInformation median", "gfci", ("median_ms",), "ms", False),
    ("4. getFullComputerInformation p95", "gfci", ("p95_ms",), "ms", False),
    ("4. getFullComputerInformation body", "gfci", ("body_bytes",), "B", None),
    ("5. allocation, small computer: requests/s", "scale", ("small", "rps"), "req/s", True),
    ("5. allocation, large computer: requests/s", "scale", ("large", "rps"), "req/s", True),
    ("5. throughput slowdown small -> large", "scale", ("slowdown_pct",), "%", False),
    ("5. 8 connections: latency p50, small computer", "scale", ("small", "p50_ms"), "ms", False),
    ("5. 8 connections: latency p50, large computer", "scale", ("large", "p50_ms"), "ms", False),
    ("5. one client: allocation latency p50, small", "scale", ("small", "seq_p50_ms"), "ms", False),
    ("5. one client: allocation latency p50, large", "scale", ("large", "seq_p50_ms"), "ms", False),
    ("5. one client: p50 increase small -> large", "scale", ("seq_p50_slowdown_pct",), "%", False),
    ("6. master RSS, all partitions busy", "rss", ("rss_kb",), "MB", False),
    ("6. master peak RSS during the fill (VmHWM)", "rss", ("rss_peak_kb",), "MB", False),
    ("6. then one getFullComputerInformation: time", "rss", ("gfci_s",), "s", False),
    ("6. master RSS after that node view", "rss", ("rss_after_gfci_kb",), "MB", False),
    ("6. master peak RSS incl. the node view", "rss", ("rss_peak_after_gfci_kb",), "MB", False),
    ("6. busy partitions reached", "rss", ("@filled",), "", None),
]


def pick(res, path):
    if res is None:
        return None
    if "error" in res:
        return "ERROR"
    if path[0] == "@distinct":
        return "%d / %d" % (res["distinct_partitions"], res["ok"])
    if path[0] == "@non2xx":
        return "%d (404: %d)" % (res["404"] + res["other_non_2xx"], res["404"])
    if path[0] == "@cpu":
        done = res.get("ok", res.get("ok_2xx"))
        return round(res["server_cpu_s"] * 1000 / done, 3) if done else None
    if path[0] == "@wrkbusy":
        return "%s / %d" % (res.get("node_view", {}).get("busy", "?"), res["ok_2xx"])
    if path[0] == "@filled":
        return "%s%s%s" % (res["node_view"]["busy"], " (capped)" if res.get("fill_capped") else "",
                           " (%d errors)" % res["fill_other_errors"] if res.get("fill_other_errors") else "")
    v = res
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def fmt(v, unit):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit == "MB":
        return "%.1f MB" % (v / 1024)
    if isinstance(v, float):
        if abs(v) >= 100:
            return "%.0f %s" % (v, unit)
        return "%.3g %s" % (v, unit)
    return "%s %s" % (v, unit)


def table(results, args, markdown=False):
    lines = []
    head = ("metric", "reference", "ours", "ratio ours/ref")
    rows = []
    for label, metric, path, unit, higher in ROWS:
        if metric not in results:
            continue
        ref = pick(results[metric].get("reference"), path)
        ours = pick(results[metric].get("ours"), path)
        ratio = "-"
        if isinstance(ref, (int, float)) and isinstance(ours, (int, float)) and higher is not None:
            if ref and unit != "%":
                r = ours / ref
                if higher:
                    ratio = "%.2fx" % r if r < 10 else "%.1fx" % r
                else:
                    ratio = "%.3g (%.1fx lower)" % (r, 1 / r) if r else "0"
        rows.append((label, fmt(ref, unit), fmt(ours, unit), ratio))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    for r in [head, tuple("-" * w for w in widths)] + rows:
        line = " | ".join(c.ljust(widths[i]) for i, c in enumerate(r))
        lines.append("| %s |" % line if markdown else line.rstrip())
    if "same_node_view" in results.get("gfci", {}):
        lines.append("")
        lines.append("4. node views of the two masters (same registration, same requests): %s"
                     % results["gfci"]["same_node_view"][:600])
    return "\n".join(lines)


def sizes_line(args):
    return ("sizes: slap1 N=%d; slap8 N=%d x %d clients; wrk -t%d -c%d <=%ds on %d partitions; "
            "gfci %d busy partitions x %d samples; scale %d requests on %d vs %d partitions (x%d); "
            "rss %d partitions (cap %ds)"
            % (args.n_requests, args.n_concurrent, args.concurrency, args.wrk_threads, args.wrk_conns,
               args.wrk_duration, args.wrk_partitions, args.gfci_partitions, args.gfci_samples,
               args.scale_requests, args.scale_small, args.scale_large, args.scale_repeat,
               args.rss_partitions,
               args.rss_timeout))


BENCHES = {"slap1": bench_slap1, "slap8": bench_slap8, "wrk": bench_wrk,
           "gfci": bench_gfci, "scale": bench_scale, "rss": bench_rss}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("ours", "reference"), help="benchmark one server only")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run under a minute")
    ap.add_argument("--metrics", default=",".join(METRICS),
                    help="comma list among %s (default: all)" % ",".join(METRICS))
    ap.add_argument("--slapos-bin", type=pathlib.Path, default=DEFAULT_OURS_BIN)
    ap.add_argument("--ref-venv", type=pathlib.Path, default=DEFAULT_REF_VENV)
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--out", type=pathlib.Path, help="JSON result file (default bench/results-<date>.json)")
    ap.add_argument("--table", type=pathlib.Path, metavar="RESULTS_JSON",
                    help="do not run: print the table of a results file (as markdown)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the databases and logs")
    ap.add_argument("--tmpdir", type=pathlib.Path, default=None,
                    help="where the databases go (default: the system temp dir, i.e. a real disk "
                         "here; /dev/shm takes fsync out of the picture)")
    g = ap.add_argument_group("sizes (defaults: full run; --quick lowers them)")
    for name in FULL:
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    g.add_argument("--concurrency", type=int, default=8)
    g.add_argument("--wrk-threads", type=int, default=2)
    g.add_argument("--wrk-conns", type=int, default=8)
    g.add_argument("--rss-gfci-timeout", type=int, default=600,
                   help="cap in s of the getFullComputerInformation made after the RSS fill")
    g.add_argument("--scale-sequential", type=int, default=None,
                   help="requests made one at a time (1 connection) after each scaling run "
                        "(default 300, quick 50)")
    g.add_argument("--scale-warmup", type=int, default=100,
                   help="requests made (not measured) before each allocation-scaling run")
    g.add_argument("--scale-repeat", type=int, default=None,
                   help="fresh-master repetitions of each allocation-scaling run (default 3, quick 1)")
    g.add_argument("--scale-timeout", type=int, default=None,
                   help="cap in s of each allocation-scaling run (default 300, quick 30)")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.scale_sequential is None:
        args.scale_sequential = 50 if args.quick else 300
    if args.scale_repeat is None:
        args.scale_repeat = 1 if args.quick else 3
    if args.scale_timeout is None:
        args.scale_timeout = 30 if args.quick else 300
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for m in args.metrics:
        if m not in METRICS:
            ap.error("unknown metric %r" % m)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        doc = json.loads(args.table.read_text())
        print(table(doc["results"], args, markdown=True))
        print()
        binary = doc.get("ours_binary") or {}
        print("Run of %s, %s s in all; ours: %s%s." % (
            doc["date"], doc["total_s"], binary.get("path", "?"),
            " (built %s)" % binary["mtime"] if binary.get("mtime") else ""))
        return
    kinds = [args.only] if args.only else ["reference", "ours"]
    if "ours" in kinds and not os.access(args.slapos_bin, os.X_OK):
        sys.exit("compare.py: our binary %s is missing (cargo build --release -p slapos, or set SLAPOS_BIN)"
                 % args.slapos_bin)
    if "reference" in kinds and not (args.ref_venv / "bin" / "slapos").exists():
        sys.exit("compare.py: no reference in %s (run scripts/setup-reference.sh)" % args.ref_venv)
    if any(m in args.metrics for m in ("wrk", "scale", "rss")) and not shutil.which(args.wrk):
        sys.exit("compare.py: wrk not found (apt-get install -y wrk)")

    def on_term(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background (SIGINT ignored)

    args.tmp = pathlib.Path(tempfile.mkdtemp(prefix="slapos-bench-", dir=args.tmpdir))
    started = time.time()
    date = datetime.date.today().isoformat()
    out_path = args.out or HERE / ("results-%s%s.json" % (date, "-quick" if args.quick else ""))
    log("slapos bench: %s; servers: %s; tmp dir %s" % (sizes_line(args), ", ".join(kinds), args.tmp))
    results = {}
    try:
        for metric in args.metrics:
            results[metric] = {}
            for kind in kinds:
                load = loadavg()
                log("%s: %s ... (load average %s)" % (metric, kind, load))
                t = time.monotonic()
                try:
                    results[metric][kind] = BENCHES[metric](kind, args)
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    log("%s: %s FAILED: %s" % (metric, kind, e))
                    results[metric][kind] = {"error": str(e)[:4000]}
                results[metric][kind]["bench_s"] = round(time.monotonic() - t, 1)
                results[metric][kind]["loadavg_before"] = load
                log("%s: %s done in %.1f s: %s" % (metric, kind, time.monotonic() - t,
                                                   short(results[metric][kind])))
            if metric == "gfci" and len(GFCI_BODIES) == 2:
                results[metric]["same_node_view"] = compare_views(GFCI_BODIES["reference"],
                                                                  GFCI_BODIES["ours"])
                log("gfci: node views %s" % results[metric]["same_node_view"])
    except KeyboardInterrupt:
        log("interrupted: stopping the masters")
        stop_all()
        raise SystemExit(130)
    finally:
        stop_all()
        if not args.keep_tmp:
            shutil.rmtree(args.tmp, ignore_errors=True)
        else:
            log("kept %s" % args.tmp)
    total = time.time() - started
    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "git_head": git_head(),  # of the repository at run time, not necessarily of the binary
        "ours_binary": binary_info(args.slapos_bin) if "ours" in kinds else None,
        "quick": args.quick,
        "database_dir": str(args.tmp),
        "sizes": {k: getattr(args, k) for k in list(FULL) + ["concurrency", "wrk_threads", "wrk_conns",
                                                             "scale_timeout", "scale_repeat", "scale_warmup", "scale_sequential",
                                                             "rss_gfci_timeout"]},
        "servers": {"reference": "slapos.core 1.26.1 `slapos proxy start` (%s), Flask form limit lifted"
                                 % args.ref_venv,
                    "ours": str(args.slapos_bin)},
        "total_s": round(total, 1),
        "results": results,
    }
    out_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print()
    print(table(results, args))
    print()
    print(sizes_line(args))
    print("total run time: %.0f s; results written to %s" % (total, out_path))


def compare_views(ref, ours):
    """Both masters got the same registration and the same requests in the
    same order: their node views must be identical but for the timestamps."""
    if ref == ours:
        return "identical (timestamps blanked)"
    i = next((k for k in range(min(len(ref), len(ours))) if ref[k] != ours[k]), min(len(ref), len(ours)))
    return ("DIFFERENT (sizes %d / %d), first difference at byte %d: reference ...%r... ours ...%r..."
            % (len(ref), len(ours), i, ref[max(0, i - 120):i + 120], ours[max(0, i - 120):i + 120]))


def short(res):
    if "error" in res:
        return "ERROR"
    keys = ("rps", "ok", "distinct_partitions", "ok_2xx", "404", "other_non_2xx", "median_ms",
            "p95_ms", "slowdown_pct", "rss_kb", "fill_requests_ok")
    return ", ".join("%s=%s" % (k, res[k]) for k in keys if k in res)


def loadavg():
    """1-minute load average of the machine (other jobs disturb the figures)."""
    try:
        return float(pathlib.Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def binary_info(path):
    import hashlib
    try:
        data = pathlib.Path(path).read_bytes()
        st = os.stat(path)
    except OSError:
        return None
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()[:16],
            "mtime": datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")}


def git_head():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except Exception:
        return None


if __name__ == "__main__":
    main()
