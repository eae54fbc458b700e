"""Label and field selectors, parsed the way the real server reads the query string."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A label key: optional DNS-subdomain prefix, then a name part of at most 63 characters.
_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SET_TERM = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "exists", "!exists", "=", "!=", "in", "notin"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" also match objects that lack the label, as on the real server.
        return not present or value not in self.values


@dataclass(frozen=True)
class Selector:
    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()  # (field, "=" or "!=", value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if not all(req.matches(labels) for req in self.labels):
            return False
        for field, op, wanted in self.fields:
            actual = meta.get(field.removeprefix("metadata."), "") or ""
            if (actual == wanted) != (op == "="):
                return False
        return True


def parse_selector(label_selector: str | None, field_selector: str | None) -> Selector:
    """Raises ValueError with the real server's wording for a selector it would refuse."""
    return Selector(
        labels=parse_label_selector(label_selector or ""),
        fields=parse_field_selector(field_selector or ""),
    )


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    return tuple(_parse_label_term(term.strip()) for term in _split_terms(text) if term.strip())


def parse_field_selector(text: str) -> tuple[tuple[str, str, str], ...]:
    terms = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        match = re.fullmatch(r"([^!=]+)(==|!=|=)(.*)", term)
        if match is None:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{term}'")
        field, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
        if field not in _FIELDS:
            raise ValueError(f'"{field}" is not a known field selector: only "metadata.name", '
                             f'"metadata.namespace"')  # fmt: skip
        terms.append((field, "!=" if op == "!=" else "=", value))
    return tuple(terms)


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` is two terms."""
    terms, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return terms


def _parse_label_term(term: str) -> Requirement:
    if term.startswith("!"):
        return Requirement(_key(term[1:].strip(), term), "!exists")
    set_term = _SET_TERM.match(term)
    if set_term is not None:
        values = frozenset(
            _value(v.strip(), term) for v in set_term.group("values").split(",") if v.strip()
        )
        return Requirement(_key(set_term.group("key"), term), set_term.group("op"), values)
    match = re.fullmatch(r"([^!=]+)(==|!=|=)(.*)", term)
    if match is None:
        return Requirement(_key(term, term), "exists")
    op = "!=" if match.group(2) == "!=" else "="
    value = _value(match.group(3).strip(), term)
    return Requirement(_key(match.group(1).strip(), term), op, frozenset({value}))


def _key(key: str, term: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"unable to parse requirement: invalid label key {key!r} in {term!r}")
    return key


def _value(value: str, term: str) -> str:
    if not _VALUE.match(value):
        raise ValueError(f"unable to parse requirement: invalid label value {value!r} in {term!r}")
    return value
