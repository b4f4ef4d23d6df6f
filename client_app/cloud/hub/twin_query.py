"""The IoT Hub query language subset the local cloud answers (`POST /devices/query`), pure and stdlib only.

Grammar (Azure docs, "IoT Hub query language for device and module twins, jobs, and message routing",
https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-query-language):

    SELECT * | item [, item]* FROM devices [WHERE condition] [GROUP BY path]
    item      := COUNT() [AS alias] | path [AS alias]
    condition := condition OR condition | condition AND condition | NOT condition | ( condition )
               | operand (= | != | <> | < | > | <= | >=) operand | IS_DEFINED(path)
    operand   := path | 'string' | "string" | number | true | false | null

Paths address the twin document (`deviceId`, `status`, `connectionState`, `tags.x`, `properties.reported.x`,
`properties.desired.x`, `devices.` prefix optional). As in IoT Hub, comparing values of different types (or a
missing value) is neither true nor false but undefined: the twin does not match, and `NOT` of undefined is
undefined too. A projection names each column after the path's last segment (or its alias); an aggregate
without alias is `$1`, as IoT Hub answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_QUERY_LENGTH = 8192  # IoT Hub's documented limit on a query's text (IoT Hub quotas and throttling)

_TOKEN = re.compile(
    r"\s*(?:(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<string>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<op><=|>=|!=|<>|[=<>(),.*\[\]])"
    r"|(?P<name>[A-Za-z_$][A-Za-z0-9_$\-]*))"
)
_KEYWORDS = {"select", "from", "where", "and", "or", "not", "group", "by", "as", "count", "is_defined"}
_UNDEFINED = object()


class QueryError(ValueError):
    """A query outside the subset or malformed: the API answers 400 with this text."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise QueryError(f"unexpected character {text[pos:].strip()[:1]!r} at position {pos}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        tokens.append(_Tok(kind, value))
        pos = match.end()
    return tokens


Predicate = Callable[[dict[str, Any]], Any]  # True, False or _UNDEFINED


@dataclass
class Query:
    """A parsed query: `run` evaluates it over twin documents."""

    columns: list[tuple[str, tuple[str, ...] | None]] | None  # None = SELECT *; path None = COUNT()
    where: Predicate | None = None
    group_by: tuple[str, ...] | None = None
    aggregate: bool = field(default=False)

    @property
    def item_type(self) -> str:
        """The `x-ms-item-type` header IoT Hub sends: whole twins or raw projections."""
        return "twin" if self.columns is None else "raw"

    def run(self, twins: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.shape(self.select(twins))

    def select(self, twins: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The twins WHERE holds True for."""
        where = self.where
        return list(twins) if where is None else [t for t in twins if where(t) is True]

    def shape(self, selected: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The answer's rows from the selected twins: themselves, projections or aggregates."""
        if self.columns is None:
            return selected
        if self.aggregate:
            return self._aggregate(selected)
        return [
            {name: _project(t, path) for name, path in self.columns if path is not None} for t in selected
        ]

    def reads_only(self, fields: Collection[str]) -> bool:
        """Whether the answer's rows are made of these top-level twin fields alone (so lighter documents that
        hold just them give the same rows); never for SELECT *."""
        if self.columns is None:
            return False
        paths = [path for _, path in self.columns if path is not None] + [self.group_by or ()]
        return all(not path or path[0] in fields for path in paths)

    def _aggregate(self, twins: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self.columns is not None
        groups: dict[str, tuple[Any, int]] = {}
        for twin in twins:
            key_value = resolve(twin, self.group_by) if self.group_by else None
            key = repr(key_value)
            value, count = groups.get(key, (key_value, 0))
            groups[key] = (value, count + 1)
        if not groups and self.group_by is None:
            groups["None"] = (None, 0)
        rows = []
        for value, count in groups.values():
            row: dict[str, Any] = {}
            for name, path in self.columns:
                if path is None:
                    row[name] = count
                elif value is not _UNDEFINED:
                    row[name] = value
            rows.append(row)
        return rows


def _project(twin: dict[str, Any], path: tuple[str, ...]) -> Any:
    value = resolve(twin, path)
    return None if value is _UNDEFINED else value


def resolve(twin: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = twin
    for segment in path:
        if not isinstance(value, dict) or segment not in value:
            return _UNDEFINED
        value = value[segment]
    return value


def parse(text: str) -> Query:
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    return _Parser(_tokenize(text)).query()


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.tokens = tokens
        self.pos = 0

    # ---- token helpers ---------------------------------------------------------------------------
    def peek(self, offset: int = 0) -> _Tok | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def accept(self, kind: str, text: str | None = None) -> _Tok | None:
        tok = self.peek()
        if tok is not None and tok.kind == kind and (text is None or tok.text == text):
            self.pos += 1
            return tok
        return None

    def expect(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.accept(kind, text)
        if tok is None:
            found = self.peek()
            raise QueryError(f"expected {text or kind} but found {found.text if found else 'the end'!r}")
        return tok

    # ---- grammar ---------------------------------------------------------------------------------
    def query(self) -> Query:
        self.expect("kw", "select")
        columns = None if self.accept("op", "*") else self.columns()
        self.expect("kw", "from")
        source = self.expect("name").text
        if source.lower() != "devices" or self.peek() == _Tok("op", "."):
            raise QueryError(f"only FROM devices is supported, not {source!r}")
        where = self.condition() if self.accept("kw", "where") else None
        group_by = None
        if self.accept("kw", "group"):
            self.expect("kw", "by")
            group_by = self.path()
        if self.peek() is not None:
            raise QueryError(f"unexpected {self.peek().text!r} after the query")  # type: ignore[union-attr]
        aggregate = columns is not None and any(path is None for _, path in columns)
        if group_by is not None and not aggregate:
            raise QueryError("GROUP BY needs an aggregate such as COUNT() in SELECT")
        if aggregate and columns is not None:
            for name, path in columns:
                if path is not None and path != group_by:
                    raise QueryError(f"{name!r} is neither aggregated nor the GROUP BY key")
        return Query(columns, where, group_by, aggregate)

    def columns(self) -> list[tuple[str, tuple[str, ...] | None]]:
        columns: list[tuple[str, tuple[str, ...] | None]] = []
        while True:
            path: tuple[str, ...] | None
            if self.accept("kw", "count"):
                self.expect("op", "(")
                self.expect("op", ")")
                path, default = None, f"${len(columns) + 1}"
            else:
                path = self.path()
                default = path[-1]
            name = self.expect("name").text if self.accept("kw", "as") else default
            columns.append((name, path))
            if not self.accept("op", ","):
                return columns

    def path(self) -> tuple[str, ...]:
        segments = [self.segment()]
        while True:
            if self.accept("op", "."):
                segments.append(self.segment())
            elif self.accept("op", "["):
                segments.append(_unquote(self.expect("string").text))
                self.expect("op", "]")
            else:
                break
        if segments[0].lower() == "devices" and len(segments) > 1:
            segments = segments[1:]
        return tuple(segments)

    def segment(self) -> str:
        tok = self.peek()
        if tok is not None and tok.kind in ("name", "kw"):
            self.pos += 1
            return tok.text
        raise QueryError(f"expected a property name but found {tok.text if tok else 'the end'!r}")

    def condition(self) -> Predicate:
        left = self.conjunction()
        while self.accept("kw", "or"):
            left = _junction(left, self.conjunction(), True)
        return left

    def conjunction(self) -> Predicate:
        left = self.negation()
        while self.accept("kw", "and"):
            left = _junction(left, self.negation(), False)
        return left

    def negation(self) -> Predicate:
        if self.accept("kw", "not"):
            return _not(self.negation())
        if self.accept("op", "("):
            inner = self.condition()
            self.expect("op", ")")
            return inner
        if self.accept("kw", "is_defined"):
            self.expect("op", "(")
            path = self.path()
            self.expect("op", ")")
            return lambda twin: resolve(twin, path) is not _UNDEFINED
        left = self.operand()
        tok = self.peek()
        if tok is None or tok.kind != "op" or tok.text not in _COMPARE:
            raise QueryError(f"expected a comparison operator but found {tok.text if tok else 'the end'!r}")
        self.pos += 1
        right = self.operand()
        return _comparison(left, _COMPARE[tok.text], right)

    def operand(self) -> Callable[[dict[str, Any]], Any]:
        tok = self.peek()
        if tok is None:
            raise QueryError("expected a value but found the end")
        if tok.kind == "number":
            self.pos += 1
            return _Literal(float(tok.text))
        if tok.kind == "string":
            self.pos += 1
            return _Literal(_unquote(tok.text))
        if tok.kind == "name" and tok.text.lower() in ("true", "false", "null"):
            self.pos += 1
            return _Literal({"true": True, "false": False, "null": None}[tok.text.lower()])
        path = self.path()
        return lambda twin: resolve(twin, path)


@dataclass(frozen=True)
class _Literal:
    """An operand that is a literal: its value whatever the twin (comparisons specialise on it)."""

    value: Any

    def __call__(self, _twin: dict[str, Any]) -> Any:
        return self.value


def _constant(operand: Callable[[dict[str, Any]], Any]) -> Any:
    return operand.value if isinstance(operand, _Literal) else _UNDEFINED


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


_KINDS: dict[type, str] = {type(None): "null", bool: "bool", int: "number", float: "number", str: "string"}


def _kind(value: Any) -> str | None:
    """The JSON type a comparison cares about; None for objects and arrays (they compare as undefined)."""
    return _KINDS.get(type(value))


_EQUALITY = (_COMPARE["="], _COMPARE["!="], _COMPARE["<>"])


def _comparison(
    left: Callable[[dict[str, Any]], Any],
    op: Callable[[Any, Any], bool],
    right: Callable[[dict[str, Any]], Any],
) -> Predicate:
    constant = _constant(right)
    if constant is not _UNDEFINED:  # `path op literal`, the common case: the literal's type is known once
        kind = _kind(constant)
        if kind in ("null", "bool") and op not in _EQUALITY:
            return lambda _twin: _UNDEFINED

        def against_literal(twin: dict[str, Any]) -> Any:
            a = left(twin)
            if a is _UNDEFINED or _KINDS.get(type(a)) != kind:
                return _UNDEFINED
            return op(a, constant)

        return against_literal

    def evaluate(twin: dict[str, Any]) -> Any:
        a, b = left(twin), right(twin)
        if a is _UNDEFINED or b is _UNDEFINED:
            return _UNDEFINED
        kind = _kind(a)
        if kind is None or kind != _kind(b):
            return _UNDEFINED
        if kind in ("null", "bool") and op not in _EQUALITY:
            return _UNDEFINED
        return op(a, b)

    return evaluate


def _junction(left: Predicate, right: Predicate, decisive: bool) -> Predicate:
    """AND (decisive False) or OR (decisive True) in three-valued logic: one decisive side decides, two
    non-decisive sides give the other value, anything else is undefined."""

    def evaluate(twin: dict[str, Any]) -> Any:
        a, b = left(twin), right(twin)
        if a is decisive or b is decisive:
            return decisive
        return (not decisive) if a is (not decisive) and b is (not decisive) else _UNDEFINED

    return evaluate


def _not(inner: Predicate) -> Predicate:
    def evaluate(twin: dict[str, Any]) -> Any:
        value = inner(twin)
        return _UNDEFINED if value is _UNDEFINED else not value

    return evaluate
