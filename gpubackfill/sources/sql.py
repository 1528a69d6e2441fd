"""The SQL a source turns into, and the checks that keep its text honest.

A source's relation and ``--where`` come from a user; nothing of them reaches
a statement as written.  A relation is a table name (each part quoted as an
identifier) or a call of an allowed table function whose arguments are
re-rendered from their tokens (string and number literals, names); a
``--where`` is refused unless its parentheses balance, it holds no
statement separator or comment, and ClickHouse parses it (``where_probe``).

Every statement built here is a ``SELECT``: a source is only ever read.
"""

from __future__ import annotations

import re

from ..errors import InvalidInput

# Table functions that read candles from somewhere and write nothing.
TABLE_FUNCTIONS = ("file", "s3", "url", "remote", "remoteSecure", "cluster", "clusterAllReplicas",
                   "azureBlobStorage", "hdfs", "gcs")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TABLE = re.compile(rf"^({_NAME})(?:\.({_NAME}))?$")
_CALL = re.compile(rf"^\s*({_NAME})\s*\((.*)\)\s*$", re.S)
_TOKEN = re.compile(r"""\s*(?:(?P<str>'(?:[^'\\]|\\.|'')*')|(?P<num>-?\d+(?:\.\d+)?)|"""
                    rf"""(?P<name>{_NAME}(?:\.{_NAME})?)|(?P<comma>,))""", re.S)


def ident(name: str) -> str:
    """``name`` as a quoted ClickHouse identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def literal(value: str) -> str:
    """``value`` as a ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def relation_sql(text: str) -> str:
    """The relation as it may appear after FROM: a quoted table name or an
    allowed table function with literal arguments; anything else is refused."""
    text = text.strip()
    m = _TABLE.match(text)
    if m:
        return ".".join(ident(p) for p in m.groups() if p)
    call = _CALL.match(text)
    if not call:
        raise InvalidInput(f"--from {text!r}: give db.table or a table function "
                           f"({', '.join(TABLE_FUNCTIONS)}) with literal arguments")
    fn, body = call.groups()
    if fn not in TABLE_FUNCTIONS:
        raise InvalidInput(f"--from {text!r}: table function {fn}() is not allowed "
                           f"(allowed: {', '.join(TABLE_FUNCTIONS)})")
    args: list[str] = []
    at, want_arg = 0, True
    while at < len(body):
        if not body[at:].strip():
            break
        tok = _TOKEN.match(body, at)
        if not tok or (tok.group("comma") is not None) == want_arg:
            raise InvalidInput(f"--from {text!r}: the arguments of {fn}() must be string or "
                               f"number literals or names, separated by commas")
        at = tok.end()
        if tok.group("comma") is not None:
            want_arg = True
            continue
        want_arg = False
        if tok.group("str") is not None:
            args.append(literal(_unquote(tok.group("str"))))
        elif tok.group("num") is not None:
            args.append(tok.group("num"))
        else:
            args.append(".".join(ident(p) for p in tok.group("name").split(".")))
    if want_arg and args:
        raise InvalidInput(f"--from {text!r}: a trailing comma in {fn}()")
    return f"{fn}({', '.join(args)})"


def _unquote(token: str) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", "0": "\0"}.get(nxt, nxt))
            i += 2
        elif c == "'" and body[i + 1:i + 2] == "'":
            out.append("'")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def check_where(where: str) -> str:
    """``where`` if it can only be one boolean expression inside parentheses:
    balanced parentheses, no ``;`` and no comment outside string literals.
    Whether ClickHouse parses it is asked separately (``where_probe``)."""
    depth, i, n = 0, 0, len(where)
    while i < n:
        c = where[i]
        if c in "'`\"":
            j = i + 1
            while j < n and where[j] != c:
                j += 2 if where[j] == "\\" else 1
            if j >= n:
                raise InvalidInput(f"--where {where!r}: an unterminated quote")
            i = j + 1
            continue
        if c == ";":
            raise InvalidInput(f"--where {where!r}: one expression, no ';'")
        if where.startswith(("--", "/*", "#"), i):
            raise InvalidInput(f"--where {where!r}: no comments")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise InvalidInput(f"--where {where!r}: unbalanced parentheses")
        i += 1
    if depth:
        raise InvalidInput(f"--where {where!r}: unbalanced parentheses")
    if not where.strip():
        raise InvalidInput("--where is empty")
    return where


def filtered(relation: str, where: str | None) -> str:
    """The source's rows as a subquery: its relation, filtered by its where."""
    cond = f" WHERE (\n{where}\n)" if where else ""
    return f"(SELECT * FROM {relation}{cond})"


def where_probe(relation: str, where: str) -> str:
    """A statement ClickHouse parses and analyses (its columns, functions
    and types) without reading a row, to check ``where``."""
    return f"EXPLAIN SELECT 1 FROM {filtered(relation, where)}"
