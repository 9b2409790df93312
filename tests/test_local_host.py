"""`sovra up` registers this machine's libvirt as host ``local``: once, and only when it answers."""

from __future__ import annotations

from sovra.compute.hosts import REFRESH_VERB, register_local
from sovra.domain.host import HOST_KIND
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.virt import fake


def _hosts(db: Database) -> list[str]:
    with db.read() as conn:
        page = resource_store.list_page(
            conn, kind=HOST_KIND, project_ids=None, selector=[], page_size=10, page_token=None
        )
    return [h.name for h in page.items]


def test_the_local_host_is_registered_once_and_its_inventory_read(db: Database) -> None:
    host = register_local(db, "test:///default")
    assert host is not None and host.name == "local" and host.status.state == "registering"
    with db.read() as conn:
        operation = operation_store.active_for(conn, host.id)
    assert operation is not None and operation.verb == REFRESH_VERB
    assert register_local(db, "test:///default") is None  # a host exists: nothing more
    assert _hosts(db) == ["local"]


def test_a_local_libvirt_that_does_not_answer_is_not_registered(db: Database) -> None:
    fake.set_reachable("absent", False)
    try:
        assert register_local(db, "fake://absent") is None
        assert register_local(db, "gopher://nowhere") is None  # no driver for it either
    finally:
        fake.set_reachable("absent", True)
    assert _hosts(db) == []
