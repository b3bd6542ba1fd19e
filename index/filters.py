"""Metadata filters: a small JSON query language compiled to parameterised SQLite.

A filter is the JSON document vector-store users already know::

    {"lang": "ja"}                                   equality
    {"year": {"$gte": 2020, "$lt": 2024}}            $eq $ne $gt $gte $lt $lte (several = AND)
    {"category": {"$in": ["food", "sports"]}}        $in / $nin
    {"summary": {"$exists": true}}                   the field is present (even if null)
    {"$or": [{"lang": "en"}, {"year": 2020}]}        $and / $or take lists, $not one filter
    {"year": {"$not": {"$gte": 2020}}}               $not also wraps a field's operators

Several keys in one object are ANDed; ``{}`` matches every document. On a list field a
condition holds when ANY element satisfies it (``{"tags": "a"}`` matches ``["a", "b"]``);
``$ne``, ``$nin`` and ``$not`` are the exact complements of ``$eq``, ``$in`` and their
operand, so they also match documents without the field. Values compare within their JSON
type only: numbers with numbers (ints and floats alike), strings with strings (code-point
order, so ISO dates compare correctly), booleans only by equality; ``{"year": {"$gte": 2020}}``
never matches the string ``"2021"``. ``null`` is not a filter value (use ``$exists``).

Field names must match :data:`FIELD_PATTERN`. They reach SQLite only as bound JSON-path
parameters (``$."field"``), never as SQL text, and each compiled condition is a fixed SQL
template over the ``metadata`` column, so no filter can change the shape of the query.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from .errors import ConfigError, IndexFormatError

# Letters (any script) or "_" first, then letters, digits, "_" or "-": no quotes, dots,
# brackets, "$" or spaces, so a name can neither escape its JSON-path label nor nest.
FIELD_PATTERN = re.compile(r"[^\W\d][\w-]{0,127}")
COMPARISONS = {"$eq": "=", "$ne": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
MAX_DEPTH = 32  # nesting of $and/$or/$not: far beyond real filters, far below SQLite's limits
MAX_VALUES = 10_000  # values in one filter ($in lists included), under SQLite's 32,766 parameters
# Conditions in one filter: SQLite chains a filter's ANDs and ORs into one expression tree,
# and refuses trees deeper than 1,000 ("Expression tree is too large"); many values of one
# field belong in one $in.
MAX_CONDITIONS = 500
_INT64 = (-(2**63), 2**63 - 1)

Scalar: TypeAlias = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    """One test on one field: ``op`` is ``$eq``, ``$gt``, ..., ``$in`` or ``$exists``.

    ``$ne``/``$nin`` parse to ``Not(Condition("$eq"/"$in"))``, so every condition is positive.
    """

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node: TypeAlias = Condition | And | Or | Not


@dataclass(frozen=True)
class Filter:
    """A validated filter; ``root`` None matches every document.

    Build one with :func:`parse_filter`; :meth:`sql` gives the WHERE clause over table
    ``docs`` and its parameters (also the cache key of the filter's mask).
    """

    root: Node | None

    @property
    def matches_all(self) -> bool:
        return self.root is None

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        """``(where_clause, parameters)`` selecting the matching rows of ``docs``."""
        if self.root is None:
            return "1", ()
        params: list[Any] = []
        return _node_sql(self.root, params), tuple(params)

    def fields(self) -> tuple[str, ...]:
        """The metadata fields the filter names, in order of first mention."""
        found: dict[str, None] = {}
        stack: list[Node] = [] if self.root is None else [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Condition):
                found.setdefault(node.field)
            elif isinstance(node, Not):
                stack.append(node.part)
            else:
                stack.extend(reversed(node.parts))
        return tuple(found)


FilterSpec: TypeAlias = Filter | Mapping[str, Any] | str | None
"""What the APIs accept as a filter: a parsed :class:`Filter`, a dict, JSON text or None."""


# -- parsing -------------------------------------------------------------------------------------


def parse_filter(spec: FilterSpec) -> Filter | None:
    """Validate a filter document (dict or JSON text); None for no filter.

    Raises :class:`ConfigError` naming the operator or field at fault.
    """
    if spec is None or isinstance(spec, Filter):
        return spec
    if isinstance(spec, str):
        try:
            spec = json.loads(spec, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"filter is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"filter must be a JSON object, got {_type_name(spec)}")
    counter = [0]
    parts = _parse_doc(spec, depth=0, counter=counter)
    conditions = sum(_conditions(p) for p in parts)
    if conditions > MAX_CONDITIONS:
        raise ConfigError(
            f"filter has {conditions:,} conditions, more than {MAX_CONDITIONS}; "
            'give many values of one field as one {"$in": [...]}'
        )
    return Filter(_all(parts))


def _conditions(node: Node) -> int:
    if isinstance(node, Condition):
        return 1
    if isinstance(node, Not):
        return _conditions(node.part)
    return sum(_conditions(p) for p in node.parts)


def _reject_constant(name: str) -> Any:
    raise ConfigError(f"filter: {name} is not a valid value (numbers must be finite)")


def _parse_doc(doc: Mapping[str, Any], *, depth: int, counter: list[int]) -> list[Node]:
    if depth > MAX_DEPTH:
        raise ConfigError(f"filter is nested more than {MAX_DEPTH} levels deep")
    parts: list[Node] = []
    for key, value in doc.items():
        if not isinstance(key, str):
            raise ConfigError(f"filter keys must be strings, got {key!r}")
        if key.startswith("$"):
            parts.append(_parse_logical(key, value, depth=depth, counter=counter))
        else:
            field = check_field(key)
            if isinstance(value, Mapping):
                parts.extend(_parse_operators(field, value, depth=depth, counter=counter))
            else:
                parts.append(Condition(field, "$eq", _scalar(field, "$eq", value, counter)))
    return parts


def _parse_logical(op: str, value: Any, *, depth: int, counter: list[int]) -> Node:
    if op == "$not":
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(
                f"filter operator '$not' takes a non-empty filter object, got {_type_name(value)}"
            )
        return Not(_all(_parse_doc(value, depth=depth + 1, counter=counter)) or And(()))
    if op in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            got = "an empty list" if value == [] else _type_name(value)
            raise ConfigError(f"filter operator {op!r} takes a non-empty list of filter objects, got {got}")
        subs: list[Node] = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise ConfigError(
                    f"filter operator {op!r}: item {i} must be an object, got {_type_name(item)}"
                )
            subs.append(_all(_parse_doc(item, depth=depth + 1, counter=counter)) or And(()))
        return And(tuple(subs)) if op == "$and" else Or(tuple(subs))
    hint = ' (field operators go inside a field: {"year": {"$gte": 2020}})' if op in FIELD_OPERATORS else ""
    raise ConfigError(
        f"filter: unknown operator {op!r} at the top level; use "
        f"{', '.join(LOGICAL_OPERATORS)} or a field name{hint}"
    )


def _parse_operators(field: str, ops: Mapping[str, Any], *, depth: int, counter: list[int]) -> list[Node]:
    if not ops:
        raise ConfigError(
            f'filter field {field!r}: empty operator object; give a value or operators such as {{"$eq": ...}}'
        )
    if depth > MAX_DEPTH:
        raise ConfigError(f"filter is nested more than {MAX_DEPTH} levels deep")
    parts: list[Node] = []
    for op, value in ops.items():
        if op not in FIELD_OPERATORS:
            raise ConfigError(
                f"filter field {field!r}: unknown operator {op!r}; use one of {', '.join(FIELD_OPERATORS)}"
            )
        if op == "$not":
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"filter field {field!r}: '$not' takes an operator object such "
                    f'as {{"$gte": 2020}}, got {_type_name(value)}'
                )
            parts.append(
                Not(_all(_parse_operators(field, value, depth=depth + 1, counter=counter)) or And(()))
            )
        elif op == "$exists":
            if not isinstance(value, bool):
                raise ConfigError(
                    f"filter field {field!r}: '$exists' takes true or false, got {_type_name(value)}"
                )
            cond = Condition(field, "$exists", True)
            parts.append(cond if value else Not(cond))
        elif op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise ConfigError(
                    f"filter field {field!r}: {op!r} takes a list of values, got {_type_name(value)}"
                )
            # Deduplicated by (kind, value): True == 1 in Python, but not in a filter.
            kinds = dict.fromkeys((_kind(v), v) for v in (_scalar(field, op, v, counter) for v in value))
            values = tuple(v for _, v in kinds)
            cond = Condition(field, "$in", values)
            parts.append(cond if op == "$in" else Not(cond))
        else:
            scalar = _scalar(field, op, value, counter)
            if isinstance(scalar, bool) and op not in ("$eq", "$ne"):
                raise ConfigError(
                    f"filter field {field!r}: {op!r} compares numbers or strings, got a boolean"
                )
            cond = Condition(field, "$eq" if op == "$ne" else op, scalar)
            parts.append(Not(cond) if op == "$ne" else cond)
    return parts


def check_field(name: Any) -> str:
    """``name`` if it is a valid metadata field name, else :class:`ConfigError`."""
    if not isinstance(name, str) or not FIELD_PATTERN.fullmatch(name):
        raise ConfigError(
            f"filter field {name!r} is not a valid field name: use letters, digits, "
            "'_' and '-' (starting with a letter or '_', at most 128 characters)"
        )
    return name


def _scalar(field: str, op: str, value: Any, counter: list[int]) -> Scalar:
    counter[0] += 1
    if counter[0] > MAX_VALUES:
        raise ConfigError(f"filter has more than {MAX_VALUES:,} values")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"filter field {field!r}: {op!r} value is not valid Unicode (a lone surrogate)"
            ) from None
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(
                f"filter field {field!r}: {op!r} value {value} is outside the 64-bit integer range"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"filter field {field!r}: {op!r} value must be finite, got {value}")
        return value
    if value is None:
        raise ConfigError(
            f"filter field {field!r}: {op!r} cannot compare with null; use "
            '{"$exists": false} for documents without the field'
        )
    raise ConfigError(
        f"filter field {field!r}: {op!r} takes a string, number or boolean, "
        f"got {_type_name(value)}"
        + (" (use $in for any of several values)" if isinstance(value, list) else "")
    )


def _all(parts: Sequence[Node]) -> Node | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        str: "a string",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


# -- compiling to SQL ----------------------------------------------------------------------------

# One fixed template per condition; only "?" parameters vary. json_each yields the value
# itself for a scalar and one row per element for a list, so "any element" needs no
# special case; a missing field yields no rows.
_EACH = "EXISTS (SELECT 1 FROM json_each(docs.metadata, ?) AS j WHERE {})"
_TYPES = {"number": "j.type IN ('integer', 'real')", "text": "j.type = 'text'"}


def json_path(field: str) -> str:
    """The SQLite JSON path of a (validated) metadata field: ``$."field"``."""
    return f'$."{check_field(field)}"'


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "bool"
    return "text" if isinstance(value, str) else "number"


def _node_sql(node: Node, params: list[Any]) -> str:
    if isinstance(node, And):
        return "(" + " AND ".join(_node_sql(p, params) for p in node.parts) + ")" if node.parts else "1"
    if isinstance(node, Or):
        return "(" + " OR ".join(_node_sql(p, params) for p in node.parts) + ")"
    if isinstance(node, Not):
        # Every condition below is 0 or 1, never NULL, so NOT is the exact complement.
        return f"(NOT {_node_sql(node.part, params)})"
    params.append(json_path(node.field))
    if node.op == "$exists":
        return "(json_type(docs.metadata, ?) IS NOT NULL)"
    if node.op == "$in":
        values = node.value if isinstance(node.value, tuple) else (node.value,)
        if not values:
            params.pop()
            return "0"
        groups: list[str] = []
        bools = sorted({v for v in values if isinstance(v, bool)})
        if bools:
            groups.append("j.type IN (" + ", ".join("'true'" if b else "'false'" for b in bools) + ")")
        for kind in ("number", "text"):
            same = [v for v in values if _kind(v) == kind]
            if same:
                params.extend(same)
                groups.append(f"({_TYPES[kind]} AND j.value IN ({', '.join('?' * len(same))}))")
        return _EACH.format(" OR ".join(groups))
    value = node.value
    assert not isinstance(value, tuple)
    if isinstance(value, bool):  # JSON true/false: equality only, by type
        return _EACH.format(f"j.type = '{'true' if value else 'false'}'")
    params.append(value)
    return _EACH.format(f"{_TYPES[_kind(value)]} AND j.value {COMPARISONS[node.op]} ?")


# -- masks over index positions ------------------------------------------------------------------


class FilterMasks:
    """Boolean masks of filters over the positions of one index version, LRU-cached.

    Position ``i`` (the BM25 matrix row, the FAISS id, ``ids.npy[i]``) is the i-th row of
    ``docs`` in rowid order (builds and updates write the id map that way), which is not
    ``rowid - 1`` once documents have been deleted; so matching rowids are mapped through
    the sorted rowid list. An index directory never changes after it is written (updates
    swap in a new one), so a mask stays valid for the life of the :class:`Index` object.
    """

    def __init__(self, conn: sqlite3.Connection, doc_ids: np.ndarray, *, size: int = 32) -> None:
        self._conn = conn
        self._doc_ids = doc_ids
        self._size = size
        self._rowids: np.ndarray | None = None
        self._cache: OrderedDict[tuple[str, tuple[Any, ...]], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        # per field: does any document have it (this object is one index version, so it holds)
        self._has_field: dict[str, bool] = {}
        self._field_names: tuple[str, ...] | None = None

    def has_field(self, field: str) -> bool:
        """Whether any document has metadata ``field`` (even as null); cached.

        A scan that stops at the first document with the field, so a field most documents
        have costs almost nothing; a field no document has costs one full scan (as a filter
        mask does), once per index version.
        """
        with self._lock:
            known = self._has_field.get(field)
            if known is None:
                row = self._conn.execute(
                    "SELECT 1 FROM docs WHERE json_type(docs.metadata, ?) IS NOT NULL LIMIT 1",
                    (json_path(field),),
                ).fetchone()
                known = self._has_field[field] = row is not None
                if len(self._has_field) > 4 * self._size:  # bound the cache for long-running servers
                    self._has_field.pop(next(iter(self._has_field)))
            return known

    def field_names(self) -> tuple[str, ...]:
        """Every top-level metadata field of the documents, sorted; cached (one scan)."""
        with self._lock:
            if self._field_names is None:
                cur = self._conn.execute(
                    "SELECT DISTINCT j.key FROM docs, json_each(docs.metadata) AS j ORDER BY j.key"
                )
                self._field_names = tuple(str(k) for (k,) in cur)
            return self._field_names

    def mask(self, flt: Filter) -> np.ndarray:
        """A read-only boolean array: ``True`` at the positions of matching documents."""
        key = flt.sql()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            mask = self._compute(*key)
            self._cache[key] = mask
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
            return mask

    def _positions_of_rowids(self) -> np.ndarray:
        if self._rowids is None:
            cur = self._conn.execute("SELECT rowid FROM docs ORDER BY rowid")
            rowids = np.fromiter((r for (r,) in cur), dtype=np.int64)
            n = len(self._doc_ids)
            if len(rowids) != n:
                raise IndexFormatError(
                    f"corpus has {len(rowids):,} documents but the id map "
                    f"{n:,}: the index is inconsistent; rebuild it"
                )
            # Spot-check the order the positions rely on (first, middle and last document).
            for pos in {0, n // 2, n - 1} if n else set():
                (doc_id,) = self._conn.execute(
                    "SELECT id FROM docs WHERE rowid = ?", (int(rowids[pos]),)
                ).fetchone()
                if doc_id != str(self._doc_ids[pos]):
                    raise IndexFormatError(
                        "corpus row order and the id map disagree: the index is inconsistent; rebuild it"
                    )
            self._rowids = rowids
        return self._rowids

    def _compute(self, where: str, params: tuple[Any, ...]) -> np.ndarray:
        rowids = self._positions_of_rowids()
        cur = self._conn.execute(f"SELECT rowid FROM docs WHERE {where}", params)
        hits = np.fromiter((r for (r,) in cur), dtype=np.int64)
        mask = np.zeros(len(rowids), dtype=np.bool_)
        mask[np.searchsorted(rowids, hits)] = True
        mask.setflags(write=False)
        return mask
