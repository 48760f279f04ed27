"""The real `slapos request` CLI (OpenOrder.request underneath) against the
master: options, exit codes and what it prints."""

import http.server
import threading
import urllib.parse

import pytest

from interop_helpers import (
    SR_DEMO, SR_OTHER, format_computer, instance, node_view, request,
)

COMP = "COMP-1"


def cli_request(master, *args):
    return master.cli("request", *args)


def test_cli_request_with_type_parameters_and_node(master, slap):
    format_computer(slap, "COMP-A", partition_count=2, net=10)
    format_computer(slap, COMP, partition_count=2, net=11)
    result = cli_request(master, "cli-inst", SR_DEMO, "--type", "mytype",
                         "--parameters", "a=1", "b=x y", "c=<&>",
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 0, result.output
    assert "State is : started" in result.output
    assert node_view(slap, "COMP-A").busy() == {}
    partition = node_view(slap, COMP).by_title("cli-inst")
    assert partition.getState() == "started"
    assert partition.getType() == "mytype"
    assert partition.getSoftwareRelease().getURI() == SR_DEMO
    parameters = partition.getInstanceParameterDict()
    assert (parameters["a"], parameters["b"], parameters["c"]) == ("1", "x y", "<&>")
    assert parameters["root_instance_title"] == "cli-inst"


def test_cli_request_twice_is_idempotent(master, slap):
    format_computer(slap, COMP, partition_count=2)
    args = ("cli-inst", SR_DEMO, "--parameters", "a=1",
            "--node", "computer_guid=%s" % COMP)
    assert cli_request(master, *args).returncode == 0
    first = node_view(slap, COMP).by_title("cli-inst")
    result = cli_request(master, *args)
    assert result.returncode == 0, result.output
    view = node_view(slap, COMP)
    assert list(view.busy()) == [first.getId()]
    assert view.partition(first.getId()).getInstanceParameterDict()["timestamp"] == \
        first.getInstanceParameterDict()["timestamp"]


def test_cli_request_default_software_type(master, slap):
    format_computer(slap, COMP, partition_count=1)
    result = cli_request(master, "cli-inst", SR_DEMO, "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 0, result.output
    assert node_view(slap, COMP).by_title("cli-inst").getType() == "default"


@pytest.mark.parametrize("state", ["stopped", "destroyed"])
def test_cli_request_state(master, slap, state):
    format_computer(slap, COMP, partition_count=1)
    started = request(slap, "cli-inst", computer=COMP)
    result = cli_request(master, "cli-inst", SR_DEMO, "--state", state,
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 0, result.output
    assert "State is : %s" % state in result.output
    partition = node_view(slap, COMP).partition(started.getId())
    assert partition.getState() == state


def test_cli_request_prints_connection_parameters(master, slap):
    format_computer(slap, COMP, partition_count=1)
    args = ("cli-inst", SR_DEMO, "--node", "computer_guid=%s" % COMP)
    result = cli_request(master, *args)
    assert result.returncode == 0, result.output
    partition = node_view(slap, COMP).by_title("cli-inst")
    connection = {
        "url": "https://[2001:db8:4242::2]:8080/?a=1&b=2",
        "password": "p\u00e2ss<w\u00f6rd>&\"'",
        "count": 3,
        "not-yet": "",
    }
    instance(slap, COMP, partition.getId()).setConnectionDict(connection)
    result = cli_request(master, *args)
    assert result.returncode == 0, result.output
    printed = {"url": connection["url"], "password": connection["password"],
               "count": "3", "not-yet": None}
    for key, value in printed.items():
        assert "%r: %r" % (key, value) in result.output, result.output


def test_cli_request_product_alias(master_factory, slap):
    master = master_factory(
        slapproxy="software_product_list =\n  demo %s\n  other %s\n" % (SR_DEMO, SR_OTHER))
    slap = master.slap()
    assert slap.getSoftwareReleaseListFromSoftwareProduct("other") == [SR_OTHER]
    assert slap.getSoftwareReleaseListFromSoftwareProduct("unknown") == []
    format_computer(slap, COMP, partition_count=2)
    result = cli_request(master, "by-product", "product.other",
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 0, result.output
    partition = node_view(slap, COMP).by_title("by-product")
    assert partition.getSoftwareRelease().getURI() == SR_OTHER
    result = cli_request(master, "by-unknown-product", "product.unknown",
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 1
    assert "No Software Release corresponding" in result.output
    assert len(node_view(slap, COMP).busy()) == 1


def test_cli_request_shared(master, slap):
    format_computer(slap, COMP, partition_count=2)
    host = request(slap, "host", computer=COMP)
    result = cli_request(master, "cli-shared", SR_DEMO, "--slave",
                         "--parameters", "domain=cli.example.com",
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 0, result.output
    assert "State is : started" in result.output
    entry, = node_view(slap, COMP).partition(host.getId()) \
        .getInstanceParameterDict()["slave_instance_list"]
    assert entry["domain"] == "cli.example.com"
    assert list(node_view(slap, COMP).busy()) == [host.getId()]


@pytest.mark.reference_bug(
    "the proxy's answer to a shared request has no _requested_state, so the "
    "client's getState() fetches registerComputerPartition of the HOST and "
    "overwrites _connection_dict: `slapos request --slave` prints the host's "
    "connection parameters instead of the shared instance's")
def test_cli_request_shared_prints_its_connection_parameters(master, slap):
    format_computer(slap, COMP, partition_count=2)
    host = request(slap, "host", computer=COMP)
    args = ("cli-shared", SR_DEMO, "--slave", "--parameters",
            "domain=cli.example.com", "--node", "computer_guid=%s" % COMP)
    assert cli_request(master, *args).returncode == 0
    entry, = node_view(slap, COMP).partition(host.getId()) \
        .getInstanceParameterDict()["slave_instance_list"]
    host_side = instance(slap, COMP, host.getId())
    host_side.setConnectionDict({"host-secret": "do-not-show"})
    host_side.setConnectionDict({"site": "https://cli.example.com/"},
                                slave_reference=entry["slave_reference"])
    result = cli_request(master, *args)
    assert result.returncode == 0, result.output
    assert "'site': 'https://cli.example.com/'" in result.output
    assert "host-secret" not in result.output


def test_cli_request_without_free_partition_fails(master, slap):
    format_computer(slap, COMP, partition_count=1)
    request(slap, "first", computer=COMP)
    result = cli_request(master, "second", SR_DEMO, "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 1, result.output
    assert "NotFoundError" in result.output
    assert "State is" not in result.output


def test_cli_request_without_host_for_shared_fails(master, slap):
    format_computer(slap, COMP, partition_count=1)
    result = cli_request(master, "no-host", SR_OTHER, "--slave",
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 1, result.output
    assert "NotFoundError" in result.output


class NotReadyMaster(http.server.ThreadingHTTPServer):
    """A remote master that has not allocated anything yet: 408 to every
    requestComputerPartition, 404 to everything else."""

    daemon_threads = True

    def __init__(self):
        self.received = []
        super().__init__(("127.0.0.1", 0), NotReadyHandler)
        self.url = "http://127.0.0.1:%d/" % self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
        self.thread.join(10)


class NotReadyHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self._answer(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if self.path.rstrip("/").endswith("/requestComputerPartition"):
            self.server.received.append(form)
            self._answer(408)
        else:
            self._answer(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def not_ready_master():
    server = NotReadyMaster()
    yield server
    server.stop()


SR_REMOTE = "https://lab.example.invalid/software/remote/software.cfg"


def test_cli_request_not_ready_exits_2(master_factory, not_ready_master):
    """A request the master accepts but cannot allocate yet (408): the CLI
    says it is being provisioned and exits 2.  The proxy answers 408 when it
    forwards a request (multimaster) to a master that is not ready."""
    master = master_factory(sections=(
        "[multimaster/%s]\nsoftware_release_list =\n  %s\n"
        % (not_ready_master.url, SR_REMOTE)))
    slap = master.slap()
    format_computer(slap, COMP, partition_count=1)
    result = cli_request(master, "remote-inst", SR_REMOTE,
                         "--node", "computer_guid=%s" % COMP)
    assert result.returncode == 2, result.output
    assert "provisioning" in result.output
    assert "State is" not in result.output
    assert len(not_ready_master.received) == 1
    assert not_ready_master.received[0]["software_release"] == [SR_REMOTE]
    # nothing allocated locally
    assert node_view(slap, COMP).busy() == {}
