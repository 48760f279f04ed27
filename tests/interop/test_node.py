"""The real node commands of slapos.core 1.26.1 against the master:
`slapos node format` (definition-file mode), `node bang`, `node software`
(removing a destroyed software release) and `node report` (wiping destroyed
partitions).  All run with root_check = false and without touching users,
network or taps, so they need no privilege."""

import getpass
import os
import signal
import time

import pytest

from interop_helpers import (
    IPV4_NETMASK, IPV6_NETMASK, SR_DEMO, SR_OTHER, child_request,
    expected_ip_list, ipv4, ipv6, node_view, request,
)

COMP = "COMP-4343"

NODE_DEFINITION = """\
[computer]
address = 2001:db8:4343::1/{v6mask}
software_user = {user}
{partitions}"""

PARTITION_DEFINITION = """\
[partition_{i}]
address = {v4}/{v4mask} {v6}/{v6mask}
user = {user}
network_interface = slaptap{i}
pathname = slappart{i}
"""

NODE_CONFIG = """\
[slapos]
master_url = {url}
computer_id = {computer_id}
software_root = {root}/soft
instance_root = {root}/inst
root_check = false
pidfile_software = {root}/slapgrid-sr.pid
pidfile_instance = {root}/slapgrid-cp.pid
pidfile_report = {root}/slapgrid-ur.pid
[slapformat]
partition_amount = {count}
computer_xml = {root}/computer.xml
input_definition_file = {definition}
alter_user = false
alter_network = false
create_tap = false
partition_has_ipv6_range = false
"""


class Node:
    """A node directory (slapos.cfg + definition file) for the real CLI."""

    def __init__(self, master, computer_id=COMP, partition_count=3, net=0x43):
        self.master = master
        self.computer_id = computer_id
        self.net = net
        # short: supervisord's unix socket lives in the instance root
        self.root = master.workdir / "n"
        self.root.mkdir()
        user = getpass.getuser()
        definition = self.root / "definition.cfg"
        definition.write_text(NODE_DEFINITION.format(
            v6mask=IPV6_NETMASK, user=user,
            partitions="".join(PARTITION_DEFINITION.format(
                i=i, v4=ipv4(net, i), v6=ipv6(net, i), user=user,
                v4mask=IPV4_NETMASK, v6mask=IPV6_NETMASK)
                for i in range(partition_count))))
        self.config = self.root / "slapos.cfg"
        self.config.write_text(NODE_CONFIG.format(
            url=master.url, computer_id=computer_id, root=self.root,
            count=partition_count, definition=definition))

    def run(self, *args):
        return self.master.cli("node", *args, "--cfg", self.config)

    def format(self):
        result = self.run("format", "--now")
        assert result.returncode == 0, result.output
        return result

    def report(self):
        result = self.run("report", "--now")
        assert result.returncode == 0, result.output
        return result

    def stop_supervisord(self):
        """`node report` launches the node's supervisord: stop it (by the
        pid it wrote) at the end of the test."""
        pidfile = self.root / "inst" / "var" / "run" / "supervisord.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def node(master):
    created = Node(master)
    yield created
    created.stop_supervisord()


def test_node_format_cli_definition_file(node, slap):
    node.format()
    view = node_view(slap, COMP)
    assert sorted(view.partitions) == ["slappart0", "slappart1", "slappart2"]
    assert view.free() == ["slappart0", "slappart1", "slappart2"]
    for index in range(3):
        assert (node.root / "inst" / ("slappart%d" % index) / ".slapos-resource").exists()

    requested = request(slap, "on-cli-node", computer=COMP)
    index = int(requested.getId()[len("slappart"):])
    partition = node_view(slap, COMP).partition(requested.getId())
    assert sorted(partition.getInstanceParameterDict()["ip_list"]) == \
        expected_ip_list(node.net, index)

    # formatting again (what the node does periodically) keeps the instance
    node.format()
    view = node_view(slap, COMP)
    assert list(view.busy()) == [requested.getId()]
    assert len(view.partitions) == 3


def test_node_bang_cli(node, slap):
    node.format()
    result = node.run("bang", "-m", "Reboot")
    assert result.returncode == 0, result.output
    assert "Bang with message 'Reboot'" in result.output


def test_node_software_removes_destroyed_release(node, slap):
    node.format()
    (node.root / "soft").mkdir(exist_ok=True)
    supply = slap.registerSupply()
    supply.supply(SR_DEMO, computer_guid=COMP)
    supply.supply(SR_OTHER, computer_guid=COMP)
    supply.supply(SR_OTHER, computer_guid=COMP, state="destroyed")
    # only the destroyed one: building the other would need buildout
    result = node.run("software", "--now", "--only-sr", SR_OTHER)
    assert result.returncode == 0, result.output
    assert node_view(slap, COMP).software() == {SR_DEMO: "available"}


def test_node_report_wipes_destroyed_partition(node, slap):
    node.format()
    kept = request(slap, "kept", computer=COMP)
    doomed = request(slap, "doomed", computer=COMP, parameters={"x": "1"})
    request(slap, "doomed", computer=COMP, state="destroyed")
    node.report()
    view = node_view(slap, COMP)
    assert list(view.busy()) == [kept.getId()]
    assert doomed.getId() in view.free()
    # the freed partition is allocated again
    again = request(slap, "reborn", computer=COMP)
    assert again.getId() == doomed.getId()


def test_node_report_destroys_a_tree_children_first(node, slap):
    node.format()
    root_instance = request(slap, "my-tree", computer=COMP)
    child = child_request(slap, COMP, root_instance.getId(), "child",
                          filter_kw={"computer_guid": COMP})
    request(slap, "my-tree", computer=COMP, state="destroyed")
    for _ in range(3):
        node.report()
        busy = node_view(slap, COMP).busy()
        # the root is never freed while its child is still there
        if root_instance.getId() not in busy:
            assert child.getId() not in busy
        if not busy:
            break
    assert node_view(slap, COMP).busy() == {}
