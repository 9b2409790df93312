"""Labels and label selectors, with the Kubernetes syntax operators already know.

Selector grammar (comma means AND)::

    env=prod        env==prod       env!=prod
    tier in (web, api)              tier notin (db)
    team            !team
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from sovra.domain.errors import InvalidArgument

_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
MAX_LABELS = 64


class Operator(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!exists"


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: ``key`` ``operator`` ``values``."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()


def validate_labels(labels: dict[str, str], field: str = "labels") -> dict[str, str]:
    """Check label keys and values; raise ``InvalidArgument`` naming the bad one."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed", field=field)
    for key, value in labels.items():
        if not _KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"label key {key!r} is invalid: use an optional DNS prefix and '/', then up to 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                field=f"{field}.{key}",
            )
        if not isinstance(value, str) or not _VALUE_RE.fullmatch(value):
            raise InvalidArgument(
                f"label value {value!r} for {key!r} is invalid: up to 63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit",
                field=f"{field}.{key}",
            )
    return labels


_TERM_RE = re.compile(
    r"""^\s*(?:
        (?P<neg>!)\s*(?P<nkey>[^\s=!,()]+) |
        (?P<skey>[^\s=!,()]+)\s+(?P<setop>in|notin)\s*\((?P<set>[^()]*)\) |
        (?P<ekey>[^\s=!,()]+)\s*(?P<eqop>==|=|!=)\s*(?P<value>[^\s=!,()]*) |
        (?P<key>[^\s=!,()]+)
    )\s*$""",
    re.VERBOSE,
)


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidArgument("unbalanced ')' in label selector", field="label_selector")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise InvalidArgument("unbalanced '(' in label selector", field="label_selector")
    terms.append("".join(current))
    return terms


def _check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise InvalidArgument(f"label selector key {key!r} is not a valid label key", field="label_selector")
    return key


def _check_value(value: str) -> str:
    if not _VALUE_RE.fullmatch(value):
        raise InvalidArgument(
            f"label selector value {value!r} is not a valid label value", field="label_selector"
        )
    return value


def _parse_term(term: str) -> Requirement:
    match = _TERM_RE.fullmatch(term)
    if not match:
        raise InvalidArgument(
            f"cannot parse label selector term {term.strip()!r}; expected key=value, key!=value, "
            "key in (a,b), key notin (a,b), key or !key",
            field="label_selector",
        )
    if match["neg"]:
        return Requirement(_check_key(match["nkey"]), Operator.NOT_EXISTS)
    if match["skey"]:
        values = tuple(_check_value(v.strip()) for v in match["set"].split(",") if v.strip())
        if not values:
            raise InvalidArgument(f"empty value set in {term.strip()!r}", field="label_selector")
        op = Operator.IN if match["setop"] == "in" else Operator.NOT_IN
        return Requirement(_check_key(match["skey"]), op, values)
    if match["ekey"]:
        op = Operator.NOT_EQUALS if match["eqop"] == "!=" else Operator.EQUALS
        return Requirement(_check_key(match["ekey"]), op, (_check_value(match["value"]),))
    return Requirement(_check_key(match["key"]), Operator.EXISTS)


def parse_selector(text: str | None) -> list[Requirement]:
    """Parse a selector string into requirements (all must hold); empty means everything."""
    if text is None or not text.strip():
        return []
    if len(text) > 4096:
        raise InvalidArgument("label selector is longer than 4096 characters", field="label_selector")
    return [_parse_term(term) for term in _split_terms(text)]
