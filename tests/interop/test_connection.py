"""Connection parameters: published by an instance (setConnectionDict), read
back by whoever requested it, and the timestamp propagation to the requester."""

from interop_helpers import (
    as_number, child_request, format_computer, instance, node_view, request,
    timestamp,
)

COMP = "COMP-4242"

# Connection parameters of fixture 018: non-ASCII, XML specials, an int, "".
CONN = {
    "url": "https://[2001:db8:4242::2]:8080/?a=1&b=2",
    "password": "p\u00e2ss<w\u00f6rd>&\"'",
    "count": 3,
    "not-yet": "",
}
CONN_READ_BACK = {
    "url": CONN["url"],
    "password": CONN["password"],
    "count": "3",
    "not-yet": None,
}


def test_requester_reads_published_parameters(slap):
    format_computer(slap, COMP)
    requested = request(slap, "my-instance", computer=COMP, parameters={"x": "1"})
    instance(slap, COMP, requested.getId()).setConnectionDict(CONN)
    again = request(slap, "my-instance", computer=COMP, parameters={"x": "1"})
    assert again.getId() == requested.getId()
    assert again.getConnectionParameterDict() == CONN_READ_BACK
    assert again.getConnectionParameter("url") == CONN["url"]


def test_publishing_does_not_reprocess_the_publisher(slap):
    format_computer(slap, COMP)
    requested = request(slap, "my-instance", computer=COMP)
    instance(slap, COMP, requested.getId()).setConnectionDict(CONN)
    # otherwise every run would publish and trigger the next run
    assert timestamp(node_view(slap, COMP).partition(requested.getId())) == \
        timestamp(requested)
    assert timestamp(request(slap, "my-instance", computer=COMP)) == \
        timestamp(requested)


def test_node_and_instance_see_published_parameters(slap):
    format_computer(slap, COMP)
    requested = request(slap, "my-instance", computer=COMP)
    instance(slap, COMP, requested.getId()).setConnectionDict(CONN)
    partition = node_view(slap, COMP).partition(requested.getId())
    assert partition.getConnectionParameterDict() == CONN_READ_BACK
    assert instance(slap, COMP, requested.getId()).getConnectionParameterDict() \
        == CONN_READ_BACK


def test_publishing_again_replaces_the_parameters(slap):
    format_computer(slap, COMP)
    requested = request(slap, "my-instance", computer=COMP)
    own = instance(slap, COMP, requested.getId())
    own.setConnectionDict({"a": "1", "b": "2"})
    own.setConnectionDict({"b": "3", "c": "<&>"})
    again = request(slap, "my-instance", computer=COMP)
    assert again.getConnectionParameterDict() == {"b": "3", "c": "<&>"}


def test_connection_parameters_survive_a_parameter_change(slap):
    format_computer(slap, COMP)
    requested = request(slap, "my-instance", computer=COMP, parameters={"v": "1"})
    instance(slap, COMP, requested.getId()).setConnectionDict({"url": "http://x/"})
    changed = request(slap, "my-instance", computer=COMP, parameters={"v": "2"})
    assert changed.getConnectionParameterDict() == {"url": "http://x/"}


def test_child_publication_is_read_by_its_parent(slap):
    format_computer(slap, COMP, partition_count=3)
    root_instance = request(slap, "my-instance", computer=COMP)
    child = child_request(slap, COMP, root_instance.getId(), "child-db",
                          filter_kw={"computer_guid": COMP})
    assert child.getConnectionParameterDict() == {}
    db_url = "mysql://user:p%40ss@[2001:db8:4242::3]:3306/db"
    instance(slap, COMP, child.getId()).setConnectionDict({"db-url": db_url})
    again = child_request(slap, COMP, root_instance.getId(), "child-db",
                          filter_kw={"computer_guid": COMP})
    assert again.getId() == child.getId()
    assert again.getConnectionParameterDict() == {"db-url": db_url}


def test_child_publication_bumps_the_parent_timestamp(slap):
    format_computer(slap, COMP, partition_count=3)
    root_instance = request(slap, "my-instance", computer=COMP)
    child = child_request(slap, COMP, root_instance.getId(), "child-db",
                          filter_kw={"computer_guid": COMP})
    bystander = request(slap, "bystander", computer=COMP)
    before = node_view(slap, COMP)
    root_before = as_number(timestamp(before.partition(root_instance.getId())))
    bystander_before = timestamp(before.partition(bystander.getId()))

    child_side = instance(slap, COMP, child.getId())
    child_side.setConnectionDict({"db-url": "mysql://db/1"})
    after = node_view(slap, COMP)
    root_after = as_number(timestamp(after.partition(root_instance.getId())))
    # the parent is reprocessed so that it can read its child's parameters
    assert root_after > root_before
    assert timestamp(after.partition(bystander.getId())) == bystander_before

    # publishing the same values again changes nothing
    child_side.setConnectionDict({"db-url": "mysql://db/1"})
    assert as_number(timestamp(node_view(slap, COMP).partition(
        root_instance.getId()))) == root_after
