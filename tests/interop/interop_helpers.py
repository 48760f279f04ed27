"""Small helpers shared by the interop tests.  Everything that talks to the
master goes through the real slapos.slap client library."""

import logging

import slapos.slap
from slapos.slap.exception import SlapException  # noqa: F401 (re-exported)
from slapos.util import dumps

SR_DEMO = "https://lab.example.invalid/software/demo/software.cfg"
SR_OTHER = "https://lab.example.invalid/software/other/software.cfg"
SR_BROKEN = "https://lab.example.invalid/software/broken/software.cfg"

# Exceptions the client raises when the master refuses a call because the
# computer/partition does not exist: the reference answers 500 (ServerError),
# a correct master 404 (NotFoundError).
MISSING_OBJECT_ERRORS = (slapos.slap.ServerError, slapos.slap.NotFoundError)

IPV4_NETMASK = "255.255.0.0"
IPV6_NETMASK = "ffff:ffff:ffff::"


def ipv4(net, index):
    return "10.0.%d.%d" % (net, 10 + index)


def ipv6(net, index):
    return "2001:db8:%x::%x" % (net, index + 2)


def tap(index):
    return "slaptap%d" % index


def expected_ip_list(net, index):
    """The (interface, address) pairs of partition `index`, sorted."""
    return sorted([(tap(index), ipv4(net, index)), (tap(index), ipv6(net, index))])


def computer_payload(computer_id, partition_count=3, net=42,
                     instance_root="/srv/slapgrid", software_root="/opt/slapgrid"):
    """The dictionary `slapos node format` posts (protocol doc section 6.3):
    one IPv4 and one IPv6 address per partition, tap slaptapN."""
    partition_list = []
    for index in range(partition_count):
        reference = "slappart%d" % index
        path = "%s/%s" % (instance_root, reference)
        partition_list.append({
            "reference": reference,
            "path": path,
            "address_list": [
                {"addr": ipv4(net, index), "netmask": IPV4_NETMASK},
                {"addr": ipv6(net, index), "netmask": IPV6_NETMASK},
            ],
            "ipv6_range": {},
            "external_storage_list": [],
            "tap": {
                "name": tap(index),
                "ipv4_addr": "", "ipv4_netmask": "", "ipv4_gateway": "",
                "ipv4_network": "", "ipv6_addr": "", "ipv6_netmask": "",
                "ipv6_gateway": "", "ipv6_network": "",
            },
            "tun": None,
            "user": {
                "name": "slapuser%d" % index,
                "path": path,
                "shell": "/bin/sh",
                "additional_group_list": ["slapsoft"],
            },
        })
    return {
        "reference": computer_id,
        "address": "2001:db8:%x::1" % net,
        "netmask": IPV6_NETMASK,
        "instance_root": instance_root,
        "software_root": software_root,
        "instance_storage_home": None,
        "ipv6_interface": None,
        "interface": {
            "name": "eth0",
            "ipv6_interface": "eth0",
            "ipv4_local_network": "10.0.0.0/16",
            "ipv6_prefixshift": 16,
        },
        "partition_has_ipv6_range": False,
        "software_user": "slapsoft",
        "tap_gateway_interface": "",
        "tap_ipv6": True,
        "os_type": '["Linux-6.1-x86_64-with-glibc2.36", "debian", "12", "Debian GNU/Linux"]',
        "public_ipv4_address": None,
        "python_version": "3.12.1",
        "slapos_version": "1.26.1",
        "partition_list": partition_list,
    }


def format_computer(slap, computer_id, partition_count=3, net=42, payload=None):
    """Register a computer exactly like `slapos node format` does:
    Computer.updateConfiguration(dumps(dict))."""
    if payload is None:
        payload = computer_payload(computer_id, partition_count, net)
    slap.registerComputer(computer_id).updateConfiguration(dumps(payload))
    return payload


class NodeView:
    """What a node sees: one fresh getFullComputerInformation."""

    def __init__(self, slap, computer_id):
        computer = slap.registerComputer(computer_id)
        self.software_list = computer.getSoftwareReleaseList()
        self.partition_list = computer.getComputerPartitionList()
        self.partitions = {p.getId(): p for p in self.partition_list}

    def software(self):
        """{url: requested state} in the order of the list."""
        return {sr.getURI(): sr.getState() for sr in self.software_list}

    def partition(self, partition_id):
        return self.partitions[partition_id]

    def busy(self):
        """{partition id: partition} of partitions holding an instance."""
        return {pid: p for pid, p in self.partitions.items()
                if p._software_release_document is not None}

    def free(self):
        return sorted(pid for pid, p in self.partitions.items()
                      if p._software_release_document is None)

    def by_title(self, title):
        for partition in self.busy().values():
            if partition._parameter_dict.get("instance_title") == title:
                return partition
        raise KeyError(title)


def node_view(slap, computer_id):
    return NodeView(slap, computer_id)


def request(slap, title, software_release=SR_DEMO, computer=None,
            parameters=None, software_type=None, state=None, shared=False,
            filter_kw=None):
    """A user request (OpenOrder.request, what `slapos request` does)."""
    filter_kw = dict(filter_kw or {})
    if computer is not None:
        filter_kw["computer_guid"] = computer
    return slap.registerOpenOrder().request(
        software_release, title,
        partition_parameter_kw=parameters,
        software_type=software_type,
        filter_kw=filter_kw,
        state=state,
        shared=shared,
    )


def instance(slap, computer_id, partition_id):
    """The partition as its own buildout sees it (registerComputerPartition)."""
    return slap.registerComputerPartition(computer_id, partition_id)


def child_request(slap, computer_id, partition_id, title,
                  software_release=SR_DEMO, software_type=None,
                  parameters=None, filter_kw=None, state=None, shared=False):
    """An instance requesting another one (ComputerPartition.request)."""
    return instance(slap, computer_id, partition_id).request(
        software_release, software_type, title,
        shared=shared,
        partition_parameter_kw=parameters,
        filter_kw=filter_kw,
        state=state,
    )


def timestamp(partition):
    return partition.getInstanceParameterDict()["timestamp"]


def as_number(timestamp_string):
    return float(timestamp_string)


class RecordingLogger(logging.Logger):
    """Passed as `logger=` to the client calls that swallow exceptions
    (SoftwareRelease.error, ComputerPartition.error): collects what they log."""

    def __init__(self):
        super().__init__("interop-recorder")
        self.records = []

    def handle(self, record):
        self.records.append(record)
