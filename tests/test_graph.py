"""Typed edges and the recursive graph queries, on both backends."""

from __future__ import annotations

import pytest

from sovra.domain.edges import Edge, EdgeType
from sovra.domain.errors import Conflict, InvalidArgument, NotFound
from sovra.store import graph, resources
from sovra.store.database import Database


class World:
    """A small cloud: a project owning servers, volumes and an image, a host, another project."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ids: dict[str, str] = {}
        with db.write() as conn:
            for name in ("proj", "other"):
                self.ids[name] = resources.create(
                    conn, kind="Project", name=name, project_id=None, labels={}, spec={}, state="A"
                ).id
            self.ids["host"] = resources.create(
                conn, kind="Host", name="host", project_id=None, labels={}, spec={}, state="A"
            ).id
            for kind, name in (
                ("Image", "img"),
                ("ImageVersion", "img-v1"),
                ("Server", "web"),
                ("Server", "db"),
                ("Volume", "vol"),
            ):
                self.ids[name] = resources.create(
                    conn, kind=kind, name=name, project_id=self.ids["proj"], labels={}, spec={}, state="A"
                ).id

    def link(self, source: str, kind: EdgeType, target: str) -> None:
        with self.db.write() as conn:
            graph.add(conn, Edge(source_id=self.ids[source], target_id=self.ids[target], type=kind))

    def names(self, items: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
        by_id = {v: k for k, v in self.ids.items()}
        return [(by_id[i.id], i.depth) for i in items]


@pytest.fixture
def world(db: Database) -> World:
    w = World(db)
    for owned in ("img", "web", "db", "vol"):
        w.link("proj", EdgeType.OWNS, owned)
    w.link("img", EdgeType.OWNS, "img-v1")
    w.link("web", EdgeType.USES, "img-v1")
    w.link("db", EdgeType.USES, "vol")
    w.link("web", EdgeType.RUNS_ON, "host")
    w.link("db", EdgeType.RUNS_ON, "host")
    return w


def test_dependents_walk_every_edge_type_with_depth(world: World) -> None:
    with world.db.read() as conn:
        host = graph.dependents(conn, world.ids["host"])
        image = graph.dependents(conn, world.ids["img"])
        shallow = graph.dependents(conn, world.ids["proj"], max_depth=1)
        only_runs_on = graph.dependents(conn, world.ids["host"], types=[EdgeType.RUNS_ON])
    assert sorted(world.names(host)) == [("db", 1), ("web", 1)]
    # the image owns its version (depth 1), which the web server uses (depth 2)
    assert world.names(image) == [("img-v1", 1), ("web", 2)]
    assert sorted(world.names(shallow)) == [("db", 1), ("img", 1), ("img-v1", 1), ("vol", 1), ("web", 1)]
    assert sorted(world.names(only_runs_on)) == [("db", 1), ("web", 1)]


def test_dependencies_are_the_reverse_walk(world: World) -> None:
    with world.db.read() as conn:
        web = graph.dependencies(conn, world.ids["web"])
    # web is owned by proj, uses img-v1 (owned by img, owned by proj) and runs on host
    assert sorted(world.names(web)) == [("host", 1), ("img", 2), ("img-v1", 1), ("proj", 1)]
    assert {i.via for i in web if world.ids["host"] == i.id} == {EdgeType.RUNS_ON}


def test_teardown_order_puts_dependents_first_and_the_root_last(world: World) -> None:
    with world.db.read() as conn:
        order = [i.id for i in graph.teardown_order(conn, world.ids["proj"])]
    names = {v: k for k, v in world.ids.items()}
    ordered = [names[i] for i in order]
    assert ordered[-1] == "proj"
    assert set(ordered) == {"proj", "img", "img-v1", "web", "db", "vol"}  # not the host: not owned
    for before, after in (("web", "img-v1"), ("img-v1", "img"), ("db", "vol")):
        assert ordered.index(before) < ordered.index(after), ordered


def test_uses_from_outside_blocks_and_names_the_user(world: World) -> None:
    with world.db.write() as conn:
        outsider = resources.create(
            conn, kind="Server", name="ext", project_id=world.ids["other"], labels={}, spec={}, state="A"
        ).id
        graph.add(conn, Edge(source_id=outsider, target_id=world.ids["img-v1"], type=EdgeType.USES))
    with world.db.read() as conn:
        doomed = graph.owned_closure(conn, world.ids["proj"])
        blockers = graph.blocking_users(conn, doomed)
        inside_only = graph.blocking_users(conn, [world.ids["vol"], world.ids["db"]])
    assert [b.id for b in blockers] == [outsider]
    assert inside_only == []  # db uses vol, but both go together


def test_edges_refuse_cycles_self_loops_and_missing_ends(world: World) -> None:
    with pytest.raises(Conflict, match="cycle"):
        world.link("img-v1", EdgeType.USES, "web")  # web already depends on img-v1
    with pytest.raises(Conflict, match="cycle"):
        world.link("web", EdgeType.OWNS, "proj")  # proj owns web
    with pytest.raises(InvalidArgument):
        world.link("web", EdgeType.USES, "web")
    with pytest.raises(NotFound) as err, world.db.write() as conn:
        graph.add(
            conn,
            Edge(
                source_id=world.ids["web"],
                target_id="01a2061c-844d-7e94-a0d3-426b2cf400de",
                type=EdgeType.USES,
            ),
        )
    assert err.value.extensions["field"] == "target_id"


def test_adding_an_edge_twice_is_idempotent_and_remove_works(world: World) -> None:
    world.link("web", EdgeType.USES, "vol")
    world.link("web", EdgeType.USES, "vol")
    with world.db.read() as conn:
        uses = [e for e in graph.edges_of(conn, world.ids["vol"]) if e.source_id == world.ids["web"]]
    assert len(uses) == 1
    edge = Edge(source_id=world.ids["web"], target_id=world.ids["vol"], type=EdgeType.USES)
    with world.db.write() as conn:
        graph.remove(conn, edge)
    with pytest.raises(NotFound), world.db.write() as conn:
        graph.remove(conn, edge)


def test_deleting_a_resource_removes_its_edges(world: World) -> None:
    with world.db.write() as conn:
        resources.delete(conn, [world.ids["web"]])
    with world.db.read() as conn:
        assert graph.dependents(conn, world.ids["host"])[0].id == world.ids["db"]
        assert all(
            world.ids["web"] not in (e.source_id, e.target_id)
            for e in graph.edges_of(conn, world.ids["img-v1"])
        )


def test_depth_is_validated(world: World) -> None:
    with pytest.raises(InvalidArgument) as err, world.db.read() as conn:
        graph.dependents(conn, world.ids["proj"], max_depth=0)
    assert err.value.field == "depth"


def test_a_resource_created_in_a_project_is_owned_by_it(db: Database) -> None:
    with db.write() as conn:
        project = resources.create(
            conn, kind="Project", name="p", project_id=None, labels={}, spec={}, state="A"
        ).id
        key = resources.create(
            conn, kind="KeyPair", name="k", project_id=project, labels={}, spec={}, state="A"
        ).id
    with db.read() as conn:
        assert [e.model_dump() for e in graph.edges_of(conn, key)] == [
            {"source_id": project, "target_id": key, "type": EdgeType.OWNS}
        ]
        assert [i.id for i in graph.teardown_order(conn, project)] == [key, project]


def test_ownership_never_crosses_projects(world: World) -> None:
    with pytest.raises(Conflict, match="never crosses projects") as err:
        world.link("other", EdgeType.OWNS, "web")
    assert err.value.extensions["field"] == "target_id"
    with world.db.write() as conn:
        foreign = resources.create(
            conn, kind="Volume", name="v", project_id=world.ids["other"], labels={}, spec={}, state="A"
        ).id
        with pytest.raises(Conflict, match="never crosses"):
            graph.add(conn, Edge(source_id=world.ids["web"], target_id=foreign, type=EdgeType.OWNS))
    world.link("web", EdgeType.OWNS, "vol")  # same project: allowed
