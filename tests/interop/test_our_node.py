"""Our node agent (`$SLAPOS_BIN node format|software|run`) against the REAL
Python proxy of slapos.core 1.26.1: the legacy SLAP protocol from the
node's side.  Only with --target=reference (our own proxy is covered by the
Rust tests).

The node runs as the test's user (root in CI), so `node format` creates
the partitions' Unix users (slapuser0, slapuser1, group slapsoft).  Its
directory is a fresh one under /tmp with mode 0755 (pytest's tmp dirs are
0700, which the partitions' users could not cross); it is removed at the
end, after the node and every service it started are killed.

The release is the catalog's minimal one, `catalog/hello/software.toml`:
a page "<greeting> from <title>" served by python3 -m http.server, its
URL published as the connection parameter `url`.
"""

import hashlib
import json
import os
import pathlib
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

from interop_helpers import node_view, request

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
COMP = "COMP-NODE"
PARTITION_AMOUNT = 2
HELLO_PATH = REPO_ROOT / "catalog" / "hello" / "software.toml"
HELLO_URL = "file://%s" % HELLO_PATH
DEFAULT_NODE_BIN = REPO_ROOT / "target" / "debug" / "slapos"

CONVERGE_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0

NODE_CONFIG = """\
[slapos]
master_url = {url}
computer_id = {computer_id}
software_root = {root}/soft
instance_root = {root}/inst
[slapformat]
partition_amount = {count}
alter_network = false
[slapos-node]
poll_interval = 1
port_base = {port_base}
"""

# One line of the proxy's access log (werkzeug), in master.log; werkzeug
# colours the request of an error answer (ANSI escapes inside the quotes).
_COLOUR = r"(?:\x1b?\[[0-9;]*m)*"
ACCESS_LINE = re.compile(
    r'"' + _COLOUR + r'(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+' + _COLOUR
    + r'" (?P<status>\d{3})')
# Expected 404s: our node asks for its watch and polls when the master has
# none (the reference); the Python client probes /getHateoasUrl when it
# connects.
EXPECTED_404 = re.compile(r"^/(api/v1/computers/[^/?]+/watch|getHateoasUrl)(\?|$)")


def node_binary():
    return pathlib.Path(os.environ.get("SLAPOS_BIN") or DEFAULT_NODE_BIN)


def free_port_range(count, low=20000, high=32000, attempts=200):
    """A base port such that base .. base+count-1 can all be bound on
    127.0.0.1 now (below the usual ephemeral range, randomised so that
    concurrent runs on one machine rarely meet)."""
    for _ in range(attempts):
        base = random.randrange(low, high - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free range of %d ports" % count)


def md5_hex(text):
    return hashlib.md5(text.encode()).hexdigest()


def tail(text, lines=80):
    return "\n".join(text.splitlines()[-lines:])


def access_log(master):
    """[(method, path, status)] of every request the proxy answered."""
    return [(m["method"], m["path"], int(m["status"]))
            for m in ACCESS_LINE.finditer(master.read_log())]


def answered(master, method, route, status=200):
    """How many `method /route` requests the proxy answered with `status`."""
    return sum(1 for m, path, s in access_log(master)
               if m == method and path.split("?")[0] == "/" + route and s == status)


def protocol_errors(master):
    """Requests the proxy answered with an error, except EXPECTED_404."""
    return [(m, path, s) for m, path, s in access_log(master)
            if s >= 400 and not (s == 404 and EXPECTED_404.match(path))]


class OurNode:
    """Our node agent with its own slapos.cfg, driven through its CLI."""

    def __init__(self, master, binary, computer_id=COMP, partition_amount=PARTITION_AMOUNT):
        self.master = master
        self.binary = binary
        self.computer_id = computer_id
        self.partition_amount = partition_amount
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="slapos-node-", dir="/tmp"))
        os.chmod(str(self.root), 0o755)
        self.instance_root = self.root / "inst"
        self.software_root = self.root / "soft"
        self.state_dir = self.instance_root / ".slapos-node"
        self.config = self.root / "slapos.cfg"
        self.log_path = self.root / "node.log"
        self.port_base = free_port_range(10 * partition_amount)
        self.config.write_text(NODE_CONFIG.format(
            url=master.url, computer_id=computer_id, root=self.root,
            count=partition_amount, port_base=self.port_base))
        self.process = None
        self._log_file = None

    # -- one-shot commands ---------------------------------------------
    def cli(self, *args, timeout=COMMAND_TIMEOUT):
        """`$SLAPOS_BIN node <args> --cfg F`; output merged into .output."""
        command = [str(self.binary), "node"] + [str(a) for a in args] + ["--cfg", str(self.config)]
        completed = subprocess.run(
            command, cwd=str(self.root), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
            start_new_session=True,
        )
        completed.output = completed.stdout.decode("utf-8", "replace")
        with open(str(self.log_path), "ab") as log:
            log.write(("### %s (exit %s)\n" % (" ".join(command), completed.returncode)).encode())
            log.write(completed.stdout)
        return completed

    def format(self):
        result = self.cli("format")
        assert result.returncode == 0, "node format failed:\n%s\n%s" % (
            result.output, self.context())
        return result

    # -- the daemon ------------------------------------------------------
    def start(self):
        command = [str(self.binary), "node", "run", "-v", "--cfg", str(self.config)]
        self._log_file = open(str(self.log_path), "ab")
        self._log_file.write(("### %s\n" % " ".join(command)).encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            command, cwd=str(self.root), stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def assert_running(self):
        if self.process is not None and self.process.poll() is not None:
            pytest.fail("`node run` exited with code %s:\n%s" % (
                self.process.returncode, self.context()), pytrace=False)

    def stop(self):
        """Stops `node run`, then every service it started (they run in
        their own sessions and survive the node by design)."""
        process, self.process = self.process, None
        if process is not None:
            _terminate_group(process.pid, process)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for pid in self.service_pids():
            _terminate_group(pid)

    def running_services(self):
        """{(partition, service): pid} from the supervisor records."""
        running = {}
        for path in sorted((self.state_dir / "supervisor").glob("*/*.json")):
            try:
                run = json.loads(path.read_text()).get("run") or {}
            except (OSError, ValueError):
                continue
            if run.get("state") == "running" and run.get("pid"):
                running[(path.parent.name, path.stem)] = int(run["pid"])
        return running

    def service_pids(self):
        """Pids of what the node runs: its supervisor records, and any
        process whose command line names the instance root."""
        pids = set(self.running_services().values())
        try:
            found = subprocess.run(["pgrep", "-f", str(self.instance_root)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:  # no pgrep: the records must do
            found = None
        for line in (found.stdout.decode().split() if found else ()):
            pids.add(int(line))
        pids.discard(os.getpid())
        return sorted(pids)

    def cleanup(self, keep_log_in=None):
        self.stop()
        if keep_log_in is not None and self.log_path.exists():
            shutil.copy(str(self.log_path), str(keep_log_in / "node.log"))
        shutil.rmtree(str(self.root), ignore_errors=True)

    # -- what happened -------------------------------------------------
    def read_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as error:
            return "(no log: %s)" % error

    def context(self):
        return "--- node log (tail) ---\n%s\n--- master log (tail) ---\n%s" % (
            tail(self.read_log()), tail(self.master.read_log()))

    def partition_path(self, partition_id):
        return self.instance_root / partition_id

    def wait_until(self, what, predicate, timeout=CONVERGE_TIMEOUT, interval=0.5):
        """Calls predicate() until it returns a true value (returned);
        fails with both logs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            self.assert_running()
            try:
                value = predicate()
            except Exception as error:  # noqa: BLE001 (reported if it lasts)
                value, last = None, error
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail("%s: not within %ss (last error: %r)\n%s" % (
                    what, timeout, last, self.context()), pytrace=False)
            time.sleep(interval)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid, sig):
    """Signals pid's process group when pid leads one, else pid alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate_group(pid, popen=None):
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                break
        elif not _alive(pid):
            return
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    if popen is not None:
        try:
            popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def reference_only(target):
    if target != "reference":
        pytest.skip("our node against the reference proxy; our own proxy is "
                    "covered by the Rust tests")


@pytest.fixture
def our_node(reference_only, master, tmp_path):
    binary = node_binary()
    if not binary.exists():
        pytest.fail("our binary is missing: SLAPOS_BIN=%s does not exist (build it "
                    "with `cargo build -p slapos`, or set SLAPOS_BIN)" % binary,
                    pytrace=False)
    node = OurNode(master, binary)
    try:
        yield node
    finally:
        node.cleanup(keep_log_in=tmp_path)


def fetch(url):
    return requests.get(url, timeout=5, proxies={"http": None, "https": None})


def page(url):
    answer = fetch(url)
    answer.raise_for_status()
    return answer.text


def not_answering(url):
    try:
        fetch(url)
    except requests.ConnectionError:
        return True
    return False


def test_node_software_installs_and_reports_to_the_reference(master, our_node):
    slap = master.slap()
    our_node.format()
    slap.registerSupply().supply(HELLO_URL, computer_guid=COMP)

    result = our_node.cli("software")

    assert result.returncode == 0, "node software failed:\n%s\n%s" % (
        result.output, our_node.context())
    release = our_node.software_root / md5_hex(HELLO_URL)
    assert (release / ".completed").is_file(), our_node.context()
    assert (release / "software.toml").read_text() == HELLO_PATH.read_text()
    assert node_view(slap, COMP).software() == {HELLO_URL: "available"}
    # the reference ignores the reports, but they must reach it and get 200
    assert answered(master, "POST", "buildingSoftwareRelease") == 1, our_node.context()
    assert answered(master, "POST", "availableSoftwareRelease") == 1, our_node.context()
    assert protocol_errors(master) == [], our_node.context()


def test_node_runs_hello_on_the_reference(master, our_node):
    slap = master.slap()

    # format: the computer and its partitions, free
    our_node.format()
    view = node_view(slap, COMP)
    assert view.free() == ["slappart%d" % i for i in range(PARTITION_AMOUNT)]
    assert view.busy() == {}

    slap.registerSupply().supply(HELLO_URL, computer_guid=COMP)
    our_node.start()

    # request until the node has deployed the instance and published its URL
    def requested(state=None):
        return request(slap, "hello-1", software_release=HELLO_URL, computer=COMP,
                       parameters={"greeting": "Bonjour"}, state=state)

    first = requested()
    partition_id = first.getId()
    assert first.getState() == "started"

    def published():
        return requested().getConnectionParameterDict().get("url")

    url = our_node.wait_until("connection parameter url published", published)
    # (the template's trailing newline is dropped, as Jinja2 does by default)
    assert page(url).strip() == "Bonjour from hello-1"
    # its service, supervised by the node, runs as the partition's user
    services = our_node.running_services()
    assert list(services) == [(partition_id, "http")], our_node.context()
    owner = os.stat("/proc/%d" % services[(partition_id, "http")]).st_uid
    if os.geteuid() == 0:
        expected_user = "slapuser%s" % partition_id[len("slappart"):]
        assert owner == pwd.getpwnam(expected_user).pw_uid
    else:
        assert owner == os.geteuid()

    # the reference saw the release installed and the instance deployed
    release = our_node.software_root / md5_hex(HELLO_URL)
    assert (release / ".completed").is_file()
    view = node_view(slap, COMP)
    assert view.software() == {HELLO_URL: "available"}
    partition = view.partition(partition_id)
    assert partition.getState() == "started"
    assert partition._software_release_document.getURI() == HELLO_URL
    assert partition.getConnectionParameterDict() == {"url": url}
    assert answered(master, "POST", "availableSoftwareRelease") >= 1, our_node.context()
    assert answered(master, "POST", "setComputerPartitionConnectionXml") >= 1, our_node.context()
    assert answered(master, "POST", "startedComputerPartition") >= 1, our_node.context()
    assert protocol_errors(master) == [], our_node.context()

    # stopped: the service stops
    assert requested("stopped").getState() == "stopped"
    our_node.wait_until("service stopped (%s no longer answers)" % url,
                        lambda: not_answering(url))
    our_node.wait_until("stoppedComputerPartition reported",
                        lambda: answered(master, "POST", "stoppedComputerPartition"))

    # started again: it answers again
    assert requested("started").getState() == "started"
    text = our_node.wait_until("service answering again at %s" % url, lambda: page(url))
    assert text.strip() == "Bonjour from hello-1"

    # destroyed: the node stops and wipes it, the proxy frees the partition
    requested("destroyed")

    def freed():
        p = node_view(slap, COMP).partition(partition_id)
        return (p.getState() == "destroyed"
                and p._software_release_document is None)

    our_node.wait_until("partition %s freed by the proxy" % partition_id, freed)
    assert answered(master, "POST", "destroyedComputerPartition") >= 1, our_node.context()
    assert not_answering(url)
    directory = our_node.partition_path(partition_id)
    assert directory.is_dir(), "partition directory removed: %s" % directory
    our_node.wait_until("partition directory %s empty" % directory,
                        lambda: not os.listdir(str(directory)), timeout=10)
    assert node_view(slap, COMP).free() == ["slappart%d" % i for i in range(PARTITION_AMOUNT)]
    assert protocol_errors(master) == [], our_node.context()
    our_node.assert_running()
