"""Computer registration (`slapos node format` -> loadComputerConfigurationFromXML)
and the node's view of it (getFullComputerInformation)."""

import pytest
import slapos.slap

from interop_helpers import (
    MISSING_OBJECT_ERRORS, computer_payload, expected_ip_list, format_computer,
    node_view, request,
)


def test_format_registers_free_partitions(slap):
    format_computer(slap, "COMP-4242", partition_count=3, net=42)
    view = node_view(slap, "COMP-4242")
    assert view.software_list == []
    assert sorted(view.partitions) == ["slappart0", "slappart1", "slappart2"]
    for partition in view.partition_list:
        assert isinstance(partition, slapos.slap.ComputerPartition)
        # a free partition is reported as destroyed, without software release
        assert partition.getState() == "destroyed"
        assert partition._software_release_document is None
        with pytest.raises(slapos.slap.NotFoundError):
            partition.getSoftwareRelease()
    assert view.free() == ["slappart0", "slappart1", "slappart2"]


def test_default_computer_answers_even_if_never_formatted(master, slap):
    # the proxy's configured computer_id answers an empty computer
    view = node_view(slap, master.computer_id)
    assert view.software_list == []
    assert view.partition_list == []


def test_formatted_addresses_reach_the_instance(slap):
    format_computer(slap, "COMP-4242", partition_count=2, net=42)
    requested = request(slap, "inst", computer="COMP-4242")
    index = int(requested.getId()[len("slappart"):])
    assert sorted(requested.ip_list) == expected_ip_list(42, index)
    partition = node_view(slap, "COMP-4242").partition(requested.getId())
    assert sorted(partition.getInstanceParameterDict()["ip_list"]) == \
        expected_ip_list(42, index)


def test_two_computers_are_independent(slap):
    format_computer(slap, "COMP-A", partition_count=2, net=10)
    format_computer(slap, "COMP-B", partition_count=4, net=11)
    assert len(node_view(slap, "COMP-A").partitions) == 2
    assert len(node_view(slap, "COMP-B").partitions) == 4
    request(slap, "on-b", computer="COMP-B")
    assert node_view(slap, "COMP-A").busy() == {}
    assert len(node_view(slap, "COMP-B").busy()) == 1


def test_reformat_keeps_instances_and_updates_addresses(slap):
    format_computer(slap, "COMP-4242", partition_count=3, net=42)
    requested = request(slap, "kept", computer="COMP-4242", parameters={"a": "1"})
    partition_id = requested.getId()
    index = int(partition_id[len("slappart"):])
    # the node formats again, its addresses changed meanwhile
    format_computer(slap, "COMP-4242", partition_count=3, net=43)
    view = node_view(slap, "COMP-4242")
    partition = view.partition(partition_id)
    assert partition.getState() == "started"
    parameters = partition.getInstanceParameterDict()
    assert parameters["instance_title"] == "kept"
    assert parameters["a"] == "1"
    assert sorted(parameters["ip_list"]) == expected_ip_list(43, index)
    # re-requesting finds the same instance
    assert request(slap, "kept", computer="COMP-4242",
                   parameters={"a": "1"}).getId() == partition_id


def test_reformat_with_more_partitions_adds_free_ones(slap):
    format_computer(slap, "COMP-4242", partition_count=2, net=42)
    requested = request(slap, "first", computer="COMP-4242")
    format_computer(slap, "COMP-4242", partition_count=4, net=42)
    view = node_view(slap, "COMP-4242")
    assert sorted(view.partitions) == ["slappart%d" % i for i in range(4)]
    assert list(view.busy()) == [requested.getId()]
    assert len(view.free()) == 3


def test_reformat_drops_partitions_not_sent(slap):
    format_computer(slap, "COMP-4242", partition_count=4, net=42)
    payload = computer_payload("COMP-4242", partition_count=4, net=42)
    payload["partition_list"] = payload["partition_list"][:2]
    format_computer(slap, "COMP-4242", payload=payload)
    assert sorted(node_view(slap, "COMP-4242").partitions) == ["slappart0", "slappart1"]


def test_unknown_computer_is_an_error_for_the_client(slap):
    format_computer(slap, "COMP-4242")
    with pytest.raises(MISSING_OBJECT_ERRORS):
        slap.registerComputer("COMP-9999").getComputerPartitionList()


@pytest.mark.reference_bug(
    "unknown computer: the proxy lets NotFoundError escape -> 500 "
    "(ServerError, which sends slapgrid offline) instead of 404")
def test_unknown_computer_is_not_found(master, slap):
    format_computer(slap, "COMP-4242")
    with pytest.raises(slapos.slap.NotFoundError):
        slap.registerComputer("COMP-9999").getSoftwareReleaseList()
    assert master.get("getFullComputerInformation",
                      params={"computer_id": "COMP-9999"}).status_code == 404


@pytest.mark.reference_bug(
    "requestComputerPartition answers the ip_list of the partitions with "
    "that partition id on EVERY computer (fixture 079): the proxy filters "
    "partition_network by partition reference only")
def test_request_ip_list_holds_only_the_partition_addresses(slap):
    format_computer(slap, "COMP-A", partition_count=1, net=10)
    format_computer(slap, "COMP-B", partition_count=1, net=11)
    requested = request(slap, "on-b", computer="COMP-B")
    assert requested.getId() == "slappart0"
    assert sorted(requested.ip_list) == expected_ip_list(11, 0)
