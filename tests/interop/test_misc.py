"""Computer-level calls (bang, usage), software products, and the master
under concurrent clients."""

import collections
import threading

import pytest

from interop_helpers import (
    SR_DEMO, format_computer, node_view, request, timestamp,
)

COMP = "COMP-4242"


def test_computer_bang(slap):
    format_computer(slap, COMP)
    requested = request(slap, "my-instance", computer=COMP)
    slap.registerComputer(COMP).bang("Reboot")
    partition = node_view(slap, COMP).partition(requested.getId())
    assert partition.getState() == "started"


def test_use_computer(slap):
    format_computer(slap, COMP)
    journal = (
        "<?xml version='1.0' encoding='utf-8'?><journal><transaction type=\"Sale Packing List\">"
        "<title>Resource consumptions</title><start_date></start_date><stop_date></stop_date>"
        "<reference>slappart0</reference><currency></currency><payment_mode></payment_mode>"
        "<category></category><arrow type=\"Administration\"><source></source>"
        "<destination></destination></arrow><movement><resource>CPU Consumption</resource>"
        "<title>CPU Consumption</title><reference>slappart0</reference>"
        "<quantity>42.0</quantity><price>0.0</price><VAT>None</VAT><category>None</category>"
        "</movement></transaction></journal>")
    slap.registerComputer(COMP).reportUsage(journal)


def test_software_product_unknown_is_an_empty_list(slap):
    assert slap.getSoftwareReleaseListFromSoftwareProduct("no-such-product") == []


@pytest.mark.master_config(slapproxy="software_product_list =\n  demo %s\n" % SR_DEMO)
def test_software_product_is_resolved(slap):
    assert slap.getSoftwareReleaseListFromSoftwareProduct("demo") == [SR_DEMO]


CLIENTS = 8
REQUESTS = 200


@pytest.mark.reference_bug(
    "concurrent requests race between 'SELECT first free partition' and "
    "'UPDATE': several instances get the same partition (each overwrites "
    "the previous one's title) or the request fails")
def test_concurrent_requests_get_distinct_partitions(master):
    setup = master.slap()
    format_computer(setup, COMP, partition_count=REQUESTS, net=42)
    results = {}
    errors = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(number):
        connection = master.slap()   # each client has its own connection
        start.wait(30)
        for index in range(number, REQUESTS, CLIENTS):
            title = "concurrent-%03d" % index
            try:
                partition = request(connection, title, computer=COMP,
                                    parameters={"index": str(index)})
                with lock:
                    results[title] = partition.getId()
            except Exception as error:   # collected, asserted below
                with lock:
                    errors.append("%s: %r" % (title, error))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    assert len(results) == REQUESTS
    shared = {pid: sorted(t for t, p in results.items() if p == pid)
              for pid, count in collections.Counter(results.values()).items()
              if count > 1}
    assert shared == {}, "partitions given to several instances"
    view = node_view(setup, COMP)
    assert len(view.busy()) == REQUESTS
    for title, partition_id in results.items():
        parameters = view.partition(partition_id).getInstanceParameterDict()
        assert parameters["instance_title"] == title
        assert parameters["index"] == str(int(title[-3:]))
    # and every instance is found again by its title
    for title in ("concurrent-000", "concurrent-199"):
        again = request(setup, title, computer=COMP,
                        parameters={"index": str(int(title[-3:]))})
        assert again.getId() == results[title]
        assert timestamp(again) == timestamp(view.partition(results[title]))
