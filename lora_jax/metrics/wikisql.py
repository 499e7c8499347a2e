"""WikiSQL: SQL text <-> logical form, logical-form accuracy, execution accuracy on SQLite.

Definitions follow github salesforce/WikiSQL (`lib/query.py`, `lib/dbengine.py`,
`evaluate.py`): a query is (sel, agg, conds=[(col, op, value)]); logical-form match compares
sel, agg and the *set* of conditions with values lower-cased; execution runs
`SELECT agg(col) FROM table WHERE ...` on the example's table (text lower-cased, `real`
columns as numbers) and compares the result lists.

Target text format emitted by the model (column names in double quotes, values in single
quotes, quotes doubled inside):
    SELECT COUNT("Player") FROM table WHERE "Position" = 'Guard' AND "Year" > '1995'
An unparsable prediction is simply wrong (never an exception).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from lora_jax.errors import DataError

AGG_OPS = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")  # WikiSQL lib/query.py
COND_OPS = ("=", ">", "<", "OP")


@dataclass(frozen=True)
class Query:
    """A WikiSQL logical form. conds: ((column_index, operator_index, value), ...)."""

    sel: int
    agg: int
    conds: tuple[tuple[int, int, str], ...]

    def key(self) -> tuple:
        """What logical-form accuracy compares: sel, agg, set of (col, op, lower(value))."""
        return self.sel, self.agg, frozenset((c, o, str(v).lower()) for c, o, v in self.conds)


def query_from_hub(sql: dict) -> Query:
    """From the hub schema {sel, agg, conds: {column_index, operator_index, condition}}
    (also accepts the original jsonl's conds: [[col, op, value], ...])."""
    conds = sql.get("conds", [])
    if isinstance(conds, dict):
        triples = zip(conds["column_index"], conds["operator_index"], conds["condition"])
    else:
        triples = conds
    return Query(
        int(sql["sel"]), int(sql["agg"]), tuple((int(c), int(o), str(v)) for c, o, v in triples)
    )


def _quote_col(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_val(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def query_to_text(q: Query, header: list[str]) -> str:
    """Logical form -> the SQL text the model learns to emit. A column, aggregation or
    operator index out of range raises ValueError naming it and the allowed range."""
    bad = [f"sel={q.sel}"] if not 0 <= q.sel < len(header) else []
    bad += [f"condition column {c}" for c, _, _ in q.conds if not 0 <= c < len(header)]
    if bad:
        raise ValueError(
            f"column index out of range ({', '.join(bad)}): the table has {len(header)} columns "
            f"(0..{len(header) - 1}: {header}); fix the sql field of this example"
        )
    if not 0 <= q.agg < len(AGG_OPS) or any(not 0 <= o < len(COND_OPS) for _, o, _ in q.conds):
        raise ValueError(
            f"aggregation index {q.agg} (0..{len(AGG_OPS) - 1}) or an operator index in "
            f"{[o for _, o, _ in q.conds]} (0..{len(COND_OPS) - 1}) is out of range"
        )
    col = _quote_col(header[q.sel])
    sel = f"{AGG_OPS[q.agg]}({col})" if q.agg else col
    text = f"SELECT {sel} FROM table"
    if q.conds:
        parts = [f"{_quote_col(header[c])} {COND_OPS[o]} {_quote_val(v)}" for c, o, v in q.conds]
        text += " WHERE " + " AND ".join(parts)
    return text


_COL = r'"((?:[^"]|"")*)"'
_VAL = r"'((?:[^']|'')*)'"
_SELECT = re.compile(
    rf"^\s*SELECT\s+(?:(MAX|MIN|COUNT|SUM|AVG)\s*\(\s*{_COL}\s*\)|{_COL})\s+FROM\s+table\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_COND = re.compile(rf"\s*{_COL}\s*(=|>|<)\s*{_VAL}\s*", re.DOTALL)


def _col_index(name: str, header: list[str]) -> int | None:
    if name in header:
        return header.index(name)
    lowered = [h.lower() for h in header]
    return lowered.index(name.lower()) if name.lower() in lowered else None


def parse_query(text: str, header: list[str]) -> Query | None:
    """SQL text -> Query, or None if it does not parse or names an unknown column."""
    m = _SELECT.match(text.strip().rstrip(";"))
    if m is None:
        return None
    agg_name, agg_col, plain_col, rest = m.groups()
    sel = _col_index((agg_col if agg_name else plain_col).replace('""', '"'), header)
    if sel is None:
        return None
    agg = AGG_OPS.index(agg_name.upper()) if agg_name else 0
    conds: list[tuple[int, int, str]] = []
    rest = rest.strip()
    if rest:
        where = re.match(r"^WHERE\s+(.*)$", rest, re.IGNORECASE | re.DOTALL)
        if where is None:
            return None
        pos, body = 0, where.group(1)
        while True:
            c = _COND.match(body, pos)
            if c is None:
                return None
            col = _col_index(c.group(1).replace('""', '"'), header)
            if col is None:
                return None
            conds.append((col, COND_OPS.index(c.group(2)), c.group(3).replace("''", "'")))
            pos = c.end()
            if pos == len(body):
                break
            sep = re.compile(r"AND\s+", re.IGNORECASE).match(body, pos)
            if sep is None:
                return None
            pos = sep.end()
    return Query(sel, agg, tuple(conds))


def _to_number(value: str) -> float | None:
    text = str(value).strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        m = re.search(r"[-+]?\d*\.?\d+", text)  # WikiSQL falls back to the first number
        return float(m.group(0)) if m else None


def build_table(table: dict) -> sqlite3.Connection:
    """An in-memory SQLite table `t` (col0..colN) from the hub schema {header, types, rows}."""
    header, rows = table["header"], table["rows"]
    types = table.get("types") or ["text"] * len(header)
    if len(types) != len(header):
        raise DataError(f"table has {len(header)} header names but {len(types)} types")
    conn = sqlite3.connect(":memory:")
    cols = ", ".join(f"col{i} {'real' if t == 'real' else 'text'}" for i, t in enumerate(types))
    conn.execute(f"CREATE TABLE t ({cols})")
    for row in rows:
        vals = [
            _to_number(v) if t == "real" else str(v).lower()
            for v, t in zip(row, types, strict=True)
        ]
        conn.execute(f"INSERT INTO t VALUES ({', '.join('?' * len(vals))})", vals)
    return conn


def execute(conn: sqlite3.Connection, table: dict, q: Query) -> list | None:
    """Run q on the table; None when the query cannot run (bad column index, bad value)."""
    types = table.get("types") or ["text"] * len(table["header"])
    n = len(table["header"])
    if not (0 <= q.sel < n) or any(not (0 <= c < n) or o > 2 for c, o, _ in q.conds):
        return None
    sel = f"col{q.sel}"
    if q.agg:
        sel = f"{AGG_OPS[q.agg]}({sel})"
    where, params = [], []
    for c, o, v in q.conds:
        if types[c] == "real":
            value = _to_number(v)
            if value is None:
                return None
        else:
            value = str(v).lower()
        where.append(f"col{c} {COND_OPS[o]} ?")
        params.append(value)
    sql = f"SELECT {sel} AS result FROM t" + (" WHERE " + " AND ".join(where) if where else "")
    try:
        return [r[0] for r in conn.execute(sql, params).fetchall()]
    except sqlite3.Error:
        return None


def wikisql_item_scores(
    preds: list[str], golds: list[Query], tables: list[dict]
) -> list[dict[str, float]]:
    """Per example: lf_acc (logical-form match) and ex_acc (execution match), 1.0 or 0.0.
    preds: [N] SQL text; golds: [N]; tables: [N] hub tables."""
    if not (len(preds) == len(golds) == len(tables)):
        raise ValueError(
            f"got {len(preds)} predictions, {len(golds)} gold queries and {len(tables)} tables; "
            "they must line up one per example"
        )
    out = []
    for text, gold, table in zip(preds, golds, tables):
        pred = parse_query(text, list(table["header"]))
        if pred is None:
            out.append({"lf_acc": 0.0, "ex_acc": 0.0})
            continue
        conn = build_table(table)
        try:
            gold_result = execute(conn, table, gold)
            pred_result = execute(conn, table, pred)
        finally:
            conn.close()
        out.append({
            "lf_acc": float(pred.key() == gold.key()),
            "ex_acc": float(pred_result is not None and pred_result == gold_result),
        })  # fmt: skip
    return out


def wikisql_scores(preds: list[str], golds: list[Query], tables: list[dict]) -> dict[str, float]:
    """lf_acc and ex_acc (fractions): the means of :func:`wikisql_item_scores`."""
    items = wikisql_item_scores(preds, golds, tables)
    if not items:
        raise ValueError("no predictions to score")
    n = len(items)
    return {"lf_acc": sum(it["lf_acc"] for it in items) / n,
            "ex_acc": sum(it["ex_acc"] for it in items) / n}  # fmt: skip
