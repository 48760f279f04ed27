"""Shared (slave) instances: hosted inside a matching instance, which
receives them in slave_instance_list and publishes for them."""

import pytest
import slapos.slap

from interop_helpers import (
    SR_DEMO, SR_OTHER, as_number, child_request, format_computer, instance,
    node_view, request, timestamp,
)

COMP = "COMP-4242"

SHARED_PARAMS = {"domain": "shop.example.com", "num": 3,
                 "note": "\u00e7a <va> & \"ok\""}
SHARED_CONN = {"site-url": "https://shop.example.com/", "ip": "2001:db8:4242::2"}


def host_and_shared(slap, parameters=SHARED_PARAMS):
    format_computer(slap, COMP, partition_count=3)
    host = request(slap, "my-instance", computer=COMP)
    shared = request(slap, "my-shared", computer=COMP, parameters=parameters,
                     shared=True)
    return host, shared


def slave_list(slap, partition_id):
    return node_view(slap, COMP).partition(partition_id) \
        .getInstanceParameterDict()["slave_instance_list"]


def test_shared_request_is_hosted_by_a_matching_instance(slap):
    format_computer(slap, COMP, partition_count=3)
    host = request(slap, "my-instance", computer=COMP)
    host_before = as_number(timestamp(host))
    shared = request(slap, "my-shared", computer=COMP,
                     parameters=SHARED_PARAMS, shared=True)
    assert shared.slap_computer_id == COMP
    assert shared.slap_computer_partition_id == host.getId()
    assert shared.getConnectionParameterDict() == {}
    parameters = shared.getInstanceParameterDict()
    assert parameters["domain"] == "shop.example.com"
    assert str(parameters["num"]) == "3"
    # no partition of its own
    view = node_view(slap, COMP)
    assert list(view.busy()) == [host.getId()]
    # the host sees it, and is reprocessed
    host_partition = view.partition(host.getId())
    entries = host_partition.getInstanceParameterDict()["slave_instance_list"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["slave_reference"]
    assert "my-shared" in entry["slave_title"]
    assert entry["slap_software_type"] == "default"
    assert entry["domain"] == "shop.example.com"
    assert str(entry["num"]) == "3"
    assert entry["note"] == SHARED_PARAMS["note"]
    assert as_number(timestamp(host_partition)) > host_before


def test_host_publishes_for_the_shared_instance(slap):
    host, shared = host_and_shared(slap)
    entry, = slave_list(slap, host.getId())
    instance(slap, COMP, host.getId()).setConnectionDict(
        SHARED_CONN, slave_reference=entry["slave_reference"])
    again = request(slap, "my-shared", computer=COMP,
                    parameters=SHARED_PARAMS, shared=True)
    assert again.getConnectionParameterDict() == SHARED_CONN
    # the host's own connection parameters are untouched
    assert request(slap, "my-instance", computer=COMP) \
        .getConnectionParameterDict() == {}


@pytest.mark.reference_bug(
    "the proxy's answer to a shared request lacks _requested_state (and "
    "_instance_guid): getState() then reads the HOST partition through "
    "registerComputerPartition and replaces the shared instance's connection "
    "parameters by the host's")
def test_shared_answer_is_complete(slap):
    host, shared = host_and_shared(slap)
    host_side = instance(slap, COMP, host.getId())
    host_side.setConnectionDict({"host-only": "secret"})
    entry, = slave_list(slap, host.getId())
    host_side.setConnectionDict(SHARED_CONN, slave_reference=entry["slave_reference"])
    again = request(slap, "my-shared", computer=COMP,
                    parameters=SHARED_PARAMS, shared=True)
    assert again.getState() == "started"
    assert again.getConnectionParameterDict() == SHARED_CONN


def test_shared_rerequest_is_idempotent(slap):
    host, shared = host_and_shared(slap)
    host_ts = timestamp(node_view(slap, COMP).partition(host.getId()))
    again = request(slap, "my-shared", computer=COMP,
                    parameters=SHARED_PARAMS, shared=True)
    assert again.slap_computer_partition_id == host.getId()
    assert len(slave_list(slap, host.getId())) == 1
    assert timestamp(node_view(slap, COMP).partition(host.getId())) == host_ts


def test_shared_parameter_change_reaches_the_host(slap):
    host, shared = host_and_shared(slap)
    host_ts = as_number(timestamp(node_view(slap, COMP).partition(host.getId())))
    request(slap, "my-shared", computer=COMP, shared=True,
            parameters={"domain": "other.example.com"})
    entry, = slave_list(slap, host.getId())
    assert entry["domain"] == "other.example.com"
    assert "num" not in entry
    assert as_number(timestamp(node_view(slap, COMP).partition(host.getId()))) > host_ts


def test_destroyed_shared_instance_leaves_the_host(slap):
    host, shared = host_and_shared(slap)
    host_ts = as_number(timestamp(node_view(slap, COMP).partition(host.getId())))
    request(slap, "my-shared", computer=COMP, parameters=SHARED_PARAMS,
            shared=True, state="destroyed")
    assert slave_list(slap, host.getId()) == []
    assert as_number(timestamp(node_view(slap, COMP).partition(host.getId()))) > host_ts
    # the host itself is still there
    assert node_view(slap, COMP).partition(host.getId()).getState() == "started"


def test_shared_request_without_host_is_not_found(slap):
    format_computer(slap, COMP, partition_count=2)
    request(slap, "my-instance", computer=COMP)
    with pytest.raises(slapos.slap.NotFoundError):
        request(slap, "lonely", software_release=SR_OTHER, computer=COMP,
                shared=True)
    # the software type must match too
    with pytest.raises(slapos.slap.NotFoundError):
        request(slap, "lonely-typed", computer=COMP, software_type="frontend",
                shared=True)


def test_instance_guid_pins_the_host(slap):
    format_computer(slap, COMP, partition_count=3)
    request(slap, "host-1", computer=COMP)
    host_2 = request(slap, "host-2", computer=COMP)
    shared = request(slap, "pinned", computer=COMP, shared=True,
                     filter_kw={"instance_guid": host_2.getInstanceGuid()})
    assert shared.slap_computer_partition_id == host_2.getId()
    assert len(slave_list(slap, host_2.getId())) == 1


def test_instance_requests_a_shared_instance(slap):
    format_computer(slap, COMP, partition_count=3)
    host = request(slap, "frontend", software_release=SR_OTHER, computer=COMP)
    user_side = request(slap, "website", computer=COMP)
    shared = child_request(slap, COMP, user_side.getId(), "website-frontend",
                           software_release=SR_OTHER, shared=True,
                           parameters={"url": "http://[2001:db8::5]:8080/"},
                           filter_kw={"computer_guid": COMP})
    assert shared.slap_computer_partition_id == host.getId()
    entry, = slave_list(slap, host.getId())
    assert entry["url"] == "http://[2001:db8::5]:8080/"
    requester_ts = as_number(timestamp(node_view(slap, COMP).partition(user_side.getId())))

    instance(slap, COMP, host.getId()).setConnectionDict(
        {"secure_access": "https://website.example.com/"},
        slave_reference=entry["slave_reference"])
    # the requesting instance is reprocessed and reads the answer
    assert as_number(timestamp(node_view(slap, COMP).partition(
        user_side.getId()))) > requester_ts
    again = child_request(slap, COMP, user_side.getId(), "website-frontend",
                          software_release=SR_OTHER, shared=True,
                          parameters={"url": "http://[2001:db8::5]:8080/"},
                          filter_kw={"computer_guid": COMP})
    assert again.getConnectionParameterDict() == {
        "secure_access": "https://website.example.com/"}
    assert node_view(slap, COMP).partition(host.getId()).getSoftwareRelease() \
        .getURI() == SR_OTHER
    assert node_view(slap, COMP).partition(user_side.getId()).getSoftwareRelease() \
        .getURI() == SR_DEMO
