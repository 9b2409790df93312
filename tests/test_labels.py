from __future__ import annotations

import pytest

from sovra.domain.errors import InvalidArgument
from sovra.domain.labels import Operator, Requirement, parse_selector, validate_labels


def test_parses_every_operator() -> None:
    reqs = parse_selector("env=prod, tier in (web, api),zone notin (z1),team,!legacy,ver!=2,app==x")
    assert reqs == [
        Requirement("env", Operator.EQUALS, ("prod",)),
        Requirement("tier", Operator.IN, ("web", "api")),
        Requirement("zone", Operator.NOT_IN, ("z1",)),
        Requirement("team", Operator.EXISTS),
        Requirement("legacy", Operator.NOT_EXISTS),
        Requirement("ver", Operator.NOT_EQUALS, ("2",)),
        Requirement("app", Operator.EQUALS, ("x",)),
    ]


def test_empty_selector_selects_everything() -> None:
    assert parse_selector("") == [] and parse_selector(None) == []


@pytest.mark.parametrize(
    "bad", ["env=(", "tier in ()", "in in", "=x", "a=b=c", "tier in (a", "x)", "bad key=1"]
)
def test_malformed_selectors_name_the_parameter(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_selector(bad)
    assert err.value.field == "label_selector"


def test_invalid_label_names_the_key() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_labels({"ok": "fine", "-bad": "x"})
    assert err.value.field == "labels.-bad"
    with pytest.raises(InvalidArgument):
        validate_labels({"k": "v" * 64})
    assert validate_labels({"example.com/team": "a_b-c.d"}) == {"example.com/team": "a_b-c.d"}
