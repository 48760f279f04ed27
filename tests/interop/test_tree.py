"""Instance trees: instances requesting children through
ComputerPartition.request, tree-wide state, bang, rename, destruction order."""

import pytest
import requests
import slapos.slap

from interop_helpers import (
    SlapException, SR_DEMO, SR_OTHER, as_number, child_request, format_computer, node_view,
    request, timestamp,
)

COMP = "COMP-4242"


def tree(slap, partition_count=4, root="my-instance"):
    """A root requested by the user and one child requested by the root."""
    format_computer(slap, COMP, partition_count=partition_count)
    root_instance = request(slap, root, computer=COMP)
    child = child_request(slap, COMP, root_instance.getId(), "child-db",
                          parameters={"size": 10, "name": "stra\u00dfe"},
                          filter_kw={"computer_guid": COMP})
    return root_instance, child


def title_of(partition):
    return partition.getInstanceParameterDict()["instance_title"]


def root_title_of(partition):
    return partition.getInstanceParameterDict()["root_instance_title"]


def test_instance_requests_a_child(slap):
    root_instance, child = tree(slap)
    assert child.getId() != root_instance.getId()
    assert child.slap_computer_id == COMP
    assert child.getState() == "started"
    assert child.getInstanceParameterDict()["size"] == "10"
    assert child.getInstanceParameterDict()["name"] == "stra\u00dfe"
    view = node_view(slap, COMP)
    node_child = view.partition(child.getId())
    assert title_of(node_child) == "child-db"
    assert root_title_of(node_child) == "my-instance"
    node_root = view.partition(root_instance.getId())
    assert title_of(node_root) == "my-instance"
    assert root_title_of(node_root) == "my-instance"


def test_child_rerequest_is_idempotent(slap):
    root_instance, child = tree(slap)
    again = child_request(slap, COMP, root_instance.getId(), "child-db",
                          parameters={"size": 10, "name": "stra\u00dfe"},
                          filter_kw={"computer_guid": COMP})
    assert again.getId() == child.getId()
    assert timestamp(again) == timestamp(child)
    assert len(node_view(slap, COMP).busy()) == 2


def test_grandchild_belongs_to_the_same_tree(slap):
    root_instance, child = tree(slap)
    grandchild = child_request(slap, COMP, child.getId(), "grandchild",
                               filter_kw={"computer_guid": COMP})
    assert grandchild.getId() not in (root_instance.getId(), child.getId())
    node_grandchild = node_view(slap, COMP).partition(grandchild.getId())
    assert title_of(node_grandchild) == "grandchild"
    assert root_title_of(node_grandchild) == "my-instance"


def test_child_titles_are_scoped_by_tree(slap):
    format_computer(slap, COMP, partition_count=4)
    root_a = request(slap, "tree-a", computer=COMP)
    root_b = request(slap, "tree-b", computer=COMP)
    db_a = child_request(slap, COMP, root_a.getId(), "db", filter_kw={"computer_guid": COMP})
    db_b = child_request(slap, COMP, root_b.getId(), "db", filter_kw={"computer_guid": COMP})
    assert len({root_a.getId(), root_b.getId(), db_a.getId(), db_b.getId()}) == 4
    view = node_view(slap, COMP)
    assert root_title_of(view.partition(db_a.getId())) == "tree-a"
    assert root_title_of(view.partition(db_b.getId())) == "tree-b"
    # a user request of the same title is yet another (root) instance
    with pytest.raises(slapos.slap.NotFoundError):
        request(slap, "db", computer=COMP)   # no partition left: it is new


def test_request_from_an_unknown_partition_is_refused(slap):
    format_computer(slap, COMP, partition_count=2)
    with pytest.raises((requests.HTTPError, SlapException)):
        child_request(slap, COMP, "slappart9", "orphan",
                      filter_kw={"computer_guid": COMP})
    assert node_view(slap, COMP).busy() == {}


def test_stopped_root_imposes_its_state_on_children(slap):
    root_instance, child = tree(slap)
    request(slap, "my-instance", computer=COMP, state="stopped")
    # the root's buildout runs again and re-requests its child (state None)
    again = child_request(slap, COMP, root_instance.getId(), "child-db",
                          parameters={"size": 10, "name": "stra\u00dfe"},
                          filter_kw={"computer_guid": COMP})
    assert again.getId() == child.getId()
    assert again.getState() == "stopped"
    view = node_view(slap, COMP)
    assert view.partition(root_instance.getId()).getState() == "stopped"
    assert view.partition(child.getId()).getState() == "stopped"


def test_destroying_the_root_destroys_the_tree(slap):
    root_instance, child = tree(slap)
    request(slap, "my-instance", computer=COMP, state="destroyed")
    view = node_view(slap, COMP)
    node_root = view.partition(root_instance.getId())
    assert node_root.getState() == "destroyed"
    # slapgrid-ur wipes the root and reports it: not freed while it has a child
    node_root.stopped()
    node_root.destroyed()
    view = node_view(slap, COMP)
    assert root_instance.getId() in view.busy()
    node_child = view.partition(child.getId())
    assert node_child.getState() == "destroyed"
    # the child goes first
    node_child.stopped()
    node_child.destroyed()
    view = node_view(slap, COMP)
    assert child.getId() not in view.busy()
    if root_instance.getId() in view.busy():
        # the node reports the root again on its next run
        view.partition(root_instance.getId()).destroyed()
    view = node_view(slap, COMP)
    assert view.busy() == {}
    assert len(view.free()) == 4


def test_bang_bumps_the_whole_tree(slap):
    root_instance, child = tree(slap, partition_count=4)
    bystander = request(slap, "bystander", computer=COMP)
    before = node_view(slap, COMP)
    before_ts = {pid: as_number(timestamp(p)) for pid, p in before.busy().items()}
    slap.registerComputerPartition(COMP, child.getId()).bang(
        "hello-on-watch process in partition encountered a problem")
    after = node_view(slap, COMP)
    after_ts = {pid: as_number(timestamp(p)) for pid, p in after.busy().items()}
    assert after_ts[root_instance.getId()] > before_ts[root_instance.getId()]
    assert after_ts[child.getId()] > before_ts[child.getId()]
    assert after_ts[bystander.getId()] == before_ts[bystander.getId()]
    # bang does not change what is requested
    assert after.partition(root_instance.getId()).getState() == "started"
    assert after.partition(child.getId()).getState() == "started"


def test_rename_a_child(slap):
    root_instance, child = tree(slap)
    slap.registerComputerPartition(COMP, child.getId()).rename("child-db-renamed")
    view = node_view(slap, COMP)
    assert title_of(view.partition(child.getId())) == "child-db-renamed"
    assert root_title_of(view.partition(child.getId())) == "my-instance"
    # the parent now finds it under its new title
    again = child_request(slap, COMP, root_instance.getId(), "child-db-renamed",
                          parameters={"size": 10, "name": "stra\u00dfe"},
                          filter_kw={"computer_guid": COMP})
    assert again.getId() == child.getId()


def test_rename_the_root(slap):
    root_instance, child = tree(slap)
    slap.registerComputerPartition(COMP, root_instance.getId()).rename("new-root")
    view = node_view(slap, COMP)
    assert title_of(view.partition(root_instance.getId())) == "new-root"
    assert root_title_of(view.partition(child.getId())) == "new-root"
    assert request(slap, "new-root", computer=COMP).getId() == root_instance.getId()


def test_instance_requests_on_another_software_release(slap):
    format_computer(slap, COMP, partition_count=2)
    root_instance = request(slap, "frontend-user", computer=COMP)
    child = child_request(slap, COMP, root_instance.getId(), "db",
                          software_release=SR_OTHER, software_type="mariadb",
                          filter_kw={"computer_guid": COMP})
    node_child = node_view(slap, COMP).partition(child.getId())
    assert node_child.getSoftwareRelease().getURI() == SR_OTHER
    assert node_child.getType() == "mariadb"
    assert node_view(slap, COMP).partition(root_instance.getId()) \
        .getSoftwareRelease().getURI() == SR_DEMO
