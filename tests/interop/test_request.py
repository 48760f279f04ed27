"""Instance requests by a user (OpenOrder.request), the node's view of them,
requested states and the node's instance reports."""

import pytest
import slapos.slap

from interop_helpers import (
    MISSING_OBJECT_ERRORS, SR_DEMO, SR_OTHER, RecordingLogger, as_number,
    format_computer, node_view, request, timestamp,
)

# Parameters of fixture 013: non-ASCII, XML-special characters, an int, "".
PARAMS = {
    "title": "Gr\u00fc\u00dfe \u2013 \u041f\u0440\u0438\u0432\u0435\u0442 \u2013 \u65e5\u672c\u8a9e \u2603",
    "markup": "<b class=\"x\">Tom & Jerry's</b> > 1",
    "port": 8080,
    "empty": "",
    "plain": "hello world",
}
# ... as every reader gets them back: strings, "" read as None.
PARAMS_READ_BACK = {
    "title": PARAMS["title"],
    "markup": PARAMS["markup"],
    "port": "8080",
    "empty": None,
    "plain": "hello world",
}

PARTITIONS = ["slappart0", "slappart1", "slappart2"]


def user_parameters(parameter_dict):
    return {k: v for k, v in parameter_dict.items() if k in PARAMS}


def test_request_allocates_a_partition(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "my-instance", computer="COMP-4242",
                        parameters=PARAMS, software_type="demo-type")
    assert isinstance(requested, slapos.slap.ComputerPartition)
    assert requested.getId() in PARTITIONS
    assert requested.slap_computer_id == "COMP-4242"
    assert requested.slap_computer_partition_id == requested.getId()
    assert requested.slap_software_release_url == SR_DEMO
    assert requested.slap_software_type == "demo-type"
    assert requested.getState() == "started"
    assert requested.getInstanceGuid()
    assert requested.getConnectionParameterDict() == {}
    parameters = requested.getInstanceParameterDict()
    assert user_parameters(parameters) == PARAMS_READ_BACK
    assert as_number(parameters["timestamp"]) > 0


def test_node_sees_the_requested_instance(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "my-instance", computer="COMP-4242",
                        parameters=PARAMS, software_type="demo-type")
    partition = node_view(slap, "COMP-4242").partition(requested.getId())
    assert partition.getState() == "started"
    assert partition.getSoftwareRelease().getURI() == SR_DEMO
    assert partition.getInstanceGuid() == requested.getInstanceGuid()
    assert partition.getConnectionParameterDict() == {}
    parameters = partition.getInstanceParameterDict()
    assert user_parameters(parameters) == PARAMS_READ_BACK
    assert parameters["instance_title"] == "my-instance"
    assert parameters["root_instance_title"] == "my-instance"
    assert parameters["slap_computer_id"] == "COMP-4242"
    assert parameters["slap_computer_partition_id"] == requested.getId()
    assert parameters["slap_software_release_url"] == SR_DEMO
    assert parameters["slap_software_type"] == "demo-type"
    assert partition.getType() == "demo-type"
    assert parameters["slave_instance_list"] == []
    assert parameters["timestamp"] == timestamp(requested)
    assert len(parameters["ip_list"]) == 2
    # the other partitions stay free
    assert len(node_view(slap, "COMP-4242").free()) == 2


def test_registered_partition_reads_its_own_instance(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "my-instance", computer="COMP-4242",
                        parameters=PARAMS)
    own = slap.registerComputerPartition("COMP-4242", requested.getId())
    assert own.getState() == "started"
    assert own.getSoftwareRelease().getURI() == SR_DEMO
    assert own.getInstanceGuid() == requested.getInstanceGuid()
    assert user_parameters(own.getInstanceParameterDict()) == PARAMS_READ_BACK
    assert own.getInstanceParameterDict()["instance_title"] == "my-instance"
    assert own.getConnectionParameterDict() == {}


def test_requests_get_distinct_partitions(slap):
    format_computer(slap, "COMP-4242")
    ids = [request(slap, "inst-%d" % i, computer="COMP-4242").getId()
           for i in range(3)]
    assert sorted(ids) == PARTITIONS
    view = node_view(slap, "COMP-4242")
    assert {p.getInstanceParameterDict()["instance_title"]
            for p in view.busy().values()} == {"inst-0", "inst-1", "inst-2"}


def test_rerequest_is_idempotent(slap):
    format_computer(slap, "COMP-4242")
    first = request(slap, "my-instance", computer="COMP-4242", parameters=PARAMS)
    again = request(slap, "my-instance", computer="COMP-4242", parameters=PARAMS)
    assert again.getId() == first.getId()
    assert again.getInstanceGuid() == first.getInstanceGuid()
    assert timestamp(again) == timestamp(first)
    assert again.getInstanceParameterDict() == first.getInstanceParameterDict()
    view = node_view(slap, "COMP-4242")
    assert list(view.busy()) == [first.getId()]
    assert timestamp(view.partition(first.getId())) == timestamp(first)


def test_rerequest_with_changed_parameters_bumps_the_timestamp(slap):
    format_computer(slap, "COMP-4242")
    first = request(slap, "my-instance", computer="COMP-4242",
                    parameters={"a": "1", "b": "2"})
    changed = request(slap, "my-instance", computer="COMP-4242",
                      parameters={"a": "1", "c": "3"})
    assert changed.getId() == first.getId()
    assert as_number(timestamp(changed)) > as_number(timestamp(first))
    parameters = node_view(slap, "COMP-4242").partition(first.getId()) \
        .getInstanceParameterDict()
    assert parameters["a"] == "1"
    assert parameters["c"] == "3"
    assert "b" not in parameters
    assert parameters["timestamp"] == timestamp(changed)


def test_software_type_defaults_to_default(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "untyped", computer="COMP-4242")
    assert requested.slap_software_type == "default"
    partition = node_view(slap, "COMP-4242").partition(requested.getId())
    assert partition.getType() == "default"


def test_rerequest_with_another_software_type(slap):
    format_computer(slap, "COMP-4242")
    first = request(slap, "typed", computer="COMP-4242", software_type="one")
    second = request(slap, "typed", computer="COMP-4242", software_type="two")
    assert second.getId() == first.getId()
    assert as_number(timestamp(second)) > as_number(timestamp(first))
    partition = node_view(slap, "COMP-4242").partition(first.getId())
    assert partition.getType() == "two"


def test_rerequest_with_another_software_release_upgrades_in_place(slap):
    format_computer(slap, "COMP-4242")
    first = request(slap, "upgraded", computer="COMP-4242")
    second = request(slap, "upgraded", software_release=SR_OTHER,
                     computer="COMP-4242")
    assert second.getId() == first.getId()
    assert as_number(timestamp(second)) > as_number(timestamp(first))
    partition = node_view(slap, "COMP-4242").partition(first.getId())
    assert partition.getSoftwareRelease().getURI() == SR_OTHER
    assert partition.getInstanceParameterDict()["slap_software_release_url"] == SR_OTHER


def test_computer_guid_places_the_instance(slap):
    format_computer(slap, "COMP-A", partition_count=2, net=10)
    format_computer(slap, "COMP-B", partition_count=2, net=11)
    on_b = request(slap, "on-b", computer="COMP-B")
    on_a = request(slap, "on-a", computer="COMP-A")
    assert on_b.slap_computer_id == "COMP-B"
    assert on_a.slap_computer_id == "COMP-A"
    assert node_view(slap, "COMP-B").by_title("on-b").getId() == on_b.getId()
    assert node_view(slap, "COMP-A").by_title("on-a").getId() == on_a.getId()
    assert list(node_view(slap, "COMP-A").busy()) == [on_a.getId()]
    assert list(node_view(slap, "COMP-B").busy()) == [on_b.getId()]


def test_no_free_partition_is_not_found(slap):
    format_computer(slap, "COMP-4242", partition_count=2)
    request(slap, "one", computer="COMP-4242")
    request(slap, "two", computer="COMP-4242")
    with pytest.raises(slapos.slap.NotFoundError):
        request(slap, "overflow-d\u00e9bordement", computer="COMP-4242")
    # existing instances are still served
    assert request(slap, "one", computer="COMP-4242").getId() in PARTITIONS[:2]
    assert len(node_view(slap, "COMP-4242").busy()) == 2


def test_request_on_an_unknown_computer_is_not_found(slap):
    format_computer(slap, "COMP-4242")
    with pytest.raises(slapos.slap.NotFoundError):
        request(slap, "nowhere", computer="COMP-NOPE")
    assert node_view(slap, "COMP-4242").busy() == {}


def test_requested_stopped_is_seen_by_the_node(slap):
    format_computer(slap, "COMP-4242")
    started = request(slap, "my-instance", computer="COMP-4242")
    stopped = request(slap, "my-instance", computer="COMP-4242", state="stopped")
    assert stopped.getId() == started.getId()
    assert stopped.getState() == "stopped"
    assert as_number(timestamp(stopped)) > as_number(timestamp(started))
    partition = node_view(slap, "COMP-4242").partition(started.getId())
    assert partition.getState() == "stopped"
    assert timestamp(partition) == timestamp(stopped)
    # the node stops it and reports
    partition.stopped()
    assert node_view(slap, "COMP-4242").partition(started.getId()).getState() == "stopped"
    # started again
    restarted = request(slap, "my-instance", computer="COMP-4242", state="started")
    assert restarted.getState() == "started"
    assert node_view(slap, "COMP-4242").partition(started.getId()).getState() == "started"


def test_rerequest_without_state_keeps_the_requested_state(slap):
    format_computer(slap, "COMP-4242")
    stopped = request(slap, "my-instance", computer="COMP-4242", state="stopped")
    again = request(slap, "my-instance", computer="COMP-4242")
    assert again.getId() == stopped.getId()
    assert timestamp(again) == timestamp(stopped)
    partition = node_view(slap, "COMP-4242").partition(stopped.getId())
    assert partition.getState() == "stopped"


def test_requested_destroyed_is_seen_by_the_node(slap):
    format_computer(slap, "COMP-4242")
    started = request(slap, "doomed", computer="COMP-4242")
    destroyed = request(slap, "doomed", computer="COMP-4242", state="destroyed")
    assert destroyed.getId() == started.getId()
    assert destroyed.getState() == "destroyed"
    assert as_number(timestamp(destroyed)) > as_number(timestamp(started))
    # still allocated until the node reports it destroyed
    view = node_view(slap, "COMP-4242")
    partition = view.partition(started.getId())
    assert partition.getState() == "destroyed"
    assert partition.getSoftwareRelease().getURI() == SR_DEMO
    assert started.getId() in view.busy()


def test_destroyed_report_frees_the_partition(slap):
    format_computer(slap, "COMP-4242", partition_count=1)
    first = request(slap, "doomed", computer="COMP-4242", parameters={"v": "1"})
    request(slap, "doomed", computer="COMP-4242", state="destroyed")
    partition = node_view(slap, "COMP-4242").partition(first.getId())
    # what slapgrid-ur does for a destroyed partition
    partition.stopped()
    partition.destroyed()
    view = node_view(slap, "COMP-4242")
    assert view.busy() == {}
    freed = view.partition(first.getId())
    assert freed.getState() == "destroyed"
    assert freed._software_release_document is None
    # the freed partition can be allocated again, to anybody
    other = request(slap, "next-one", computer="COMP-4242")
    assert other.getId() == first.getId()
    parameters = node_view(slap, "COMP-4242").partition(other.getId()) \
        .getInstanceParameterDict()
    assert parameters["instance_title"] == "next-one"
    assert "v" not in parameters
    assert other.getConnectionParameterDict() == {}


def test_destroyed_instance_title_can_be_requested_again(slap):
    format_computer(slap, "COMP-4242", partition_count=2)
    first = request(slap, "phoenix", computer="COMP-4242", parameters={"gen": "1"})
    request(slap, "phoenix", computer="COMP-4242", state="destroyed")
    partition = node_view(slap, "COMP-4242").partition(first.getId())
    partition.destroyed()
    reborn = request(slap, "phoenix", computer="COMP-4242", parameters={"gen": "2"})
    assert reborn.getState() == "started"
    assert reborn.getInstanceParameterDict()["gen"] == "2"
    view = node_view(slap, "COMP-4242")
    assert list(view.busy()) == [reborn.getId()]


def test_instance_reports_are_accepted(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "reported", computer="COMP-4242")
    partition = node_view(slap, "COMP-4242").partition(requested.getId())
    partition.started()
    partition.stopped()
    partition.started()
    recorder = RecordingLogger()
    partition.error("Promise 'check-port' failed:\n  caf\u00e9 <down> & out\n",
                    logger=recorder)
    assert recorder.records == [], [r.getMessage() for r in recorder.records]
    # reports do not change the requested state
    again = node_view(slap, "COMP-4242").partition(requested.getId())
    assert again.getState() == "started"
    assert timestamp(again) == timestamp(requested)


def test_partition_certificate(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "certified", computer="COMP-4242")
    partition = node_view(slap, "COMP-4242").partition(requested.getId())
    certificate = partition.getCertificate()
    assert set(certificate) >= {"certificate", "key"}
    assert isinstance(certificate["certificate"], str)
    assert isinstance(certificate["key"], str)


def test_unknown_partition_is_an_error_for_the_client(slap):
    format_computer(slap, "COMP-4242")
    with pytest.raises(MISSING_OBJECT_ERRORS):
        slap.registerComputerPartition("COMP-4242", "slappart9").getState()
    with pytest.raises(MISSING_OBJECT_ERRORS):
        slap.registerComputerPartition("COMP-9999", "slappart0").getInstanceParameterDict()


@pytest.mark.reference_bug(
    "registerComputerPartition of an unknown partition: uncaught "
    "UnauthorizedError in the proxy -> 500 instead of 404")
def test_unknown_partition_is_not_found(slap):
    format_computer(slap, "COMP-4242")
    with pytest.raises(slapos.slap.NotFoundError):
        slap.registerComputerPartition("COMP-4242", "slappart9").getState()


def test_destroyed_report_of_an_unknown_partition_is_harmless(slap):
    format_computer(slap, "COMP-4242")
    requested = request(slap, "bystander", computer="COMP-4242")
    # slapgrid tolerates 404 here, but a 5xx would send it offline
    try:
        slap.registerComputerPartition("COMP-4242", "slappart9").destroyed()
    except slapos.slap.NotFoundError:
        pass
    assert requested.getId() in node_view(slap, "COMP-4242").busy()
