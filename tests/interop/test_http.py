"""HTTP-level behaviour the client library cannot express: status codes of
malformed calls, routing, the liveness probe."""

import pytest

from slapos.util import dumps, loads

from interop_helpers import (
    SR_DEMO, child_request, format_computer, node_view, request,
)


def test_get_run_id_is_stable(master):
    first = master.get("getRunId")
    second = master.get("getRunId")
    assert first.status_code == 200
    assert first.text.strip()
    assert first.text == second.text


def test_unknown_route_is_404(master):
    assert master.get("noSuchSlapMethod").status_code == 404
    assert master.post("noSuchSlapMethod", data={"a": "b"}).status_code == 404


def test_wrong_method_is_405(master):
    answer = master.post("getFullComputerInformation", data={"computer_id": "COMP-1"})
    assert answer.status_code == 405
    answer = master.get("requestComputerPartition")
    assert answer.status_code == 405
    answer = master.get("supplySupply", params={"url": SR_DEMO})
    assert answer.status_code == 405


def test_missing_required_fields_are_400(master, slap):
    format_computer(slap, "COMP-1")
    # query field computer_id missing
    assert master.get("getFullComputerInformation").status_code == 400
    # form field state missing
    answer = master.post("supplySupply", data={"url": SR_DEMO, "computer_id": "COMP-1"})
    assert answer.status_code == 400
    # form field partition_reference missing
    answer = master.post("requestComputerPartition", data={
        "software_release": SR_DEMO,
        "software_type": "default",
        "state": dumps(None),
        "filter_xml": dumps({"computer_guid": "COMP-1"}),
        "partition_parameter_xml": dumps({}),
        "shared_xml": dumps(False),
    })
    assert answer.status_code == 400
    # nothing was allocated by the refused request
    computer = loads(master.get("getFullComputerInformation",
                                params={"computer_id": "COMP-1"}).content)
    assert all(p._software_release_document is None
               for p in computer._computer_partition_list)


@pytest.mark.reference_bug(
    "requestComputerPartition without the optional partition_parameter_xml / "
    "filter_xml / shared_xml fields answers 500: the proxy's default value is "
    "bytes and it calls .encode() on it")
def test_request_without_optional_fields_uses_defaults(master, slap):
    format_computer(slap, master.computer_id)
    answer = master.post("requestComputerPartition", data={
        "software_release": SR_DEMO,
        "partition_reference": "minimal",
        "software_type": "default",
        "state": dumps(None),
    })
    assert answer.status_code == 200, answer.text
    software_instance = loads(answer.content)
    assert software_instance.slap_computer_id == master.computer_id
    assert software_instance.slap_computer_partition_id in ("slappart0", "slappart1", "slappart2")
    assert software_instance._requested_state == "started"


@pytest.mark.reference_bug(
    "getSoftwareReleaseListFromSoftwareProduct with neither "
    "software_product_reference nor software_release_url fails an assert "
    "in the proxy: 500 instead of 400")
def test_software_product_lookup_without_arguments_is_400(master):
    assert master.get("getSoftwareReleaseListFromSoftwareProduct").status_code == 400


@pytest.mark.reference_bug(
    "supplySupply with a state other than available/destroyed raises "
    "ValueError in the proxy: 500 instead of 400")
def test_supply_bad_state_is_400(master, slap):
    format_computer(slap, "COMP-1")
    answer = master.post("supplySupply", data={
        "url": SR_DEMO, "computer_id": "COMP-1", "state": "installed"})
    assert answer.status_code == 400
    # and nothing was supplied
    computer = loads(master.get("getFullComputerInformation",
                                params={"computer_id": "COMP-1"}).content)
    assert computer._software_release_list == []


def test_legacy_get_computer_information_route(master, slap):
    """The client falls back to getComputerInformation when
    getFullComputerInformation answers 404: same document."""
    format_computer(slap, "COMP-1")
    slap.registerSupply().supply(SR_DEMO, computer_guid="COMP-1")
    full = loads(master.get("getFullComputerInformation",
                            params={"computer_id": "COMP-1"}).content)
    answer = master.get("getComputerInformation", params={"computer_id": "COMP-1"})
    assert answer.status_code == 200
    legacy = loads(answer.content)
    assert [p._partition_id for p in legacy._computer_partition_list] == \
        [p._partition_id for p in full._computer_partition_list]
    assert [s._software_release for s in legacy._software_release_list] == [SR_DEMO]


def test_instance_identified_by_form_fields_without_header(master, slap):
    """Clients before 1.26 identify the requesting partition only by the
    computer_id / computer_partition_id form fields (no X-SlapPartition)."""
    format_computer(slap, "COMP-1")
    root = request(slap, "root-instance", computer="COMP-1")
    answer = master.post("requestComputerPartition", data={
        "computer_id": "COMP-1",
        "computer_partition_id": root.getId(),
        "software_release": SR_DEMO,
        "software_type": "default",
        "partition_reference": "child",
        "shared_xml": dumps(False),
        "partition_parameter_xml": dumps({"k": "v"}),
        "filter_xml": dumps({"computer_guid": "COMP-1"}),
        "state": dumps(None),
    })
    assert answer.status_code == 200, answer.text
    child_id = loads(answer.content).slap_computer_partition_id
    assert child_id != root.getId()
    child = node_view(slap, "COMP-1").partition(child_id)
    assert child.getInstanceParameterDict()["root_instance_title"] == "root-instance"
    # the 1.26 client (with the header) finds the same child
    again = child_request(slap, "COMP-1", root.getId(), "child",
                          parameters={"k": "v"}, filter_kw={"computer_guid": "COMP-1"})
    assert again.getId() == child_id
