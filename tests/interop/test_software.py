"""Software releases: supply/remove (library and CLI) and the node's reports."""

from interop_helpers import (
    SR_BROKEN, SR_DEMO, SR_OTHER, RecordingLogger, format_computer, node_view,
)


def test_supply_library(slap):
    format_computer(slap, "COMP-1")
    slap.registerSupply().supply(SR_DEMO, computer_guid="COMP-1")
    slap.registerSupply().supply(SR_OTHER, computer_guid="COMP-1", state="available")
    assert node_view(slap, "COMP-1").software() == {
        SR_DEMO: "available", SR_OTHER: "available"}


def test_supply_twice_lists_once(slap):
    format_computer(slap, "COMP-1")
    slap.registerSupply().supply(SR_DEMO, computer_guid="COMP-1")
    slap.registerSupply().supply(SR_DEMO, computer_guid="COMP-1")
    view = node_view(slap, "COMP-1")
    assert [sr.getURI() for sr in view.software_list] == [SR_DEMO]
    software_release = view.software_list[0]
    assert software_release.getComputerId() == "COMP-1"


def test_supply_is_per_computer(slap):
    format_computer(slap, "COMP-1", net=1)
    format_computer(slap, "COMP-2", net=2)
    slap.registerSupply().supply(SR_DEMO, computer_guid="COMP-2")
    assert node_view(slap, "COMP-1").software() == {}
    assert node_view(slap, "COMP-2").software() == {SR_DEMO: "available"}


def test_supply_and_remove_cli(master, slap):
    format_computer(slap, "COMP-1")
    result = master.cli("supply", SR_DEMO, "COMP-1")
    assert result.returncode == 0, result.output
    result = master.cli("supply", SR_OTHER, "COMP-1")
    assert result.returncode == 0, result.output
    assert node_view(slap, "COMP-1").software() == {
        SR_DEMO: "available", SR_OTHER: "available"}

    result = master.cli("remove", SR_DEMO, "COMP-1")
    assert result.returncode == 0, result.output
    assert node_view(slap, "COMP-1").software() == {
        SR_DEMO: "destroyed", SR_OTHER: "available"}


def test_node_destroyed_report_removes_the_software_release(slap):
    format_computer(slap, "COMP-1")
    supply = slap.registerSupply()
    supply.supply(SR_DEMO, computer_guid="COMP-1")
    supply.supply(SR_OTHER, computer_guid="COMP-1")
    supply.supply(SR_DEMO, computer_guid="COMP-1", state="destroyed")
    # the node removes the software and reports it
    for software_release in node_view(slap, "COMP-1").software_list:
        if software_release.getState() == "destroyed":
            software_release.destroyed()
    assert node_view(slap, "COMP-1").software() == {SR_OTHER: "available"}


def test_supply_again_after_remove(slap):
    format_computer(slap, "COMP-1")
    supply = slap.registerSupply()
    supply.supply(SR_DEMO, computer_guid="COMP-1")
    supply.supply(SR_DEMO, computer_guid="COMP-1", state="destroyed")
    assert node_view(slap, "COMP-1").software() == {SR_DEMO: "destroyed"}
    supply.supply(SR_DEMO, computer_guid="COMP-1", state="available")
    assert node_view(slap, "COMP-1").software() == {SR_DEMO: "available"}


def test_software_release_reports(slap):
    format_computer(slap, "COMP-1")
    supply = slap.registerSupply()
    supply.supply(SR_DEMO, computer_guid="COMP-1")
    supply.supply(SR_BROKEN, computer_guid="COMP-1")
    view = node_view(slap, "COMP-1")
    releases = {sr.getURI(): sr for sr in view.software_list}
    # what slapgrid-sr sends while building
    releases[SR_DEMO].building()
    releases[SR_DEMO].available()
    releases[SR_BROKEN].building()
    recorder = RecordingLogger()
    releases[SR_BROKEN].error(
        "Traceback (most recent call last):\n  buildout failed: "
        "Gr\u00fc\u00dfe <&> \u65e5\u672c\n", logger=recorder)
    assert recorder.records == [], [r.getMessage() for r in recorder.records]
    # reports never change what the user asked for
    assert node_view(slap, "COMP-1").software() == {
        SR_DEMO: "available", SR_BROKEN: "available"}
