"""Text to SQL: answer a question about a shop's SQLite database with one SELECT query.

The database (``shop.sqlite``, built by ``build_db.py``) ships in this folder. The rubric runs the
model's query and the gold query and compares their result sets: as multisets of rows, or as lists
when the question asks for an order; columns may come in any order, floats are compared to 2
decimals. The model's query runs in a sandbox: the file is opened read-only (``mode=ro``) with
``PRAGMA query_only``, an authorizer allows only reading (no writes, ATTACH, PRAGMA, transactions,
``load_extension``), one statement only, a progress handler stops it after a time bound, and at
most ``MAX_ROWS`` rows are fetched. A query the sandbox refuses, or that fails, scores 0.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path

from envhub import ChatEnv, Rubric, Score, criterion, system, user

from .build_db import PATH as DB_PATH
from .build_db import SCHEMA

QUESTIONS = Path(__file__).with_name("questions.json")
MAX_ROWS = 1000
TIMEOUT_S = 2.0
SQL_BLOCK = re.compile(r"```sql\s*\n(.*?)```", re.S | re.I)

SYSTEM_PROMPT = (
    "You write SQLite queries. Answer the user's question about the database below with one SELECT "
    "query in a ```sql code block. Return exactly the columns the question asks for; order the rows "
    "only when the question asks for an order.\n\nSchema:\n" + SCHEMA.strip()
)

# Authorizer action codes a read-only query needs; everything else is denied.
READ_ONLY = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
DENIED_FUNCTIONS = {"load_extension"}


class QueryError(ValueError):
    """A query the sandbox refused, or that failed; the message says why."""


def _authorize(action: int, arg1, arg2, database, trigger) -> int:
    if action not in READ_ONLY or (action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in DENIED_FUNCTIONS):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def run_query(sql: str, *, path: Path = DB_PATH, timeout_s: float = TIMEOUT_S, max_rows: int = MAX_ROWS):
    """Run one read-only query; returns (column names, rows) or raises :class:`QueryError`."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA query_only = ON")
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)  # no giant strings or blobs
        db.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 100_000)
        db.set_authorizer(_authorize)
        deadline = time.monotonic() + timeout_s
        db.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
        cursor = db.execute(sql)
        if cursor.description is None:
            raise QueryError("not a query: only a single SELECT is run")
        rows = cursor.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            raise QueryError(f"more than {max_rows} rows")
        return [d[0] for d in cursor.description], rows
    except (sqlite3.Error, sqlite3.Warning) as exc:
        reason = f"took longer than {timeout_s} s" if "interrupted" in str(exc) else str(exc)
        raise QueryError(reason) from None
    finally:
        db.close()


@functools.lru_cache(maxsize=256)
def gold_rows(sql: str) -> tuple:
    return tuple(run_query(sql, timeout_s=10.0)[1])


def _normal(row) -> tuple:
    return tuple(round(v, 2) if isinstance(v, float) else v for v in row)


def same_result(got: list, want: list, *, ordered: bool) -> bool:
    """Whether two result sets match, allowing any column order."""
    if len(got) != len(want):
        return False
    want = [_normal(r) for r in want]
    width = len(want[0]) if want else 0
    if got and len(got[0]) != width:
        return False
    for perm in itertools.permutations(range(width)) if width <= 5 else [tuple(range(width))]:
        rows = [_normal(tuple(r[i] for i in perm)) for r in got]
        if (rows == want) if ordered else (Counter(rows) == Counter(want)):
            return True
    return False


def extract_sql(text: str) -> str | None:
    """The query in the last ```sql block of ``text``."""
    blocks = SQL_BLOCK.findall(text)
    return blocks[-1].strip() if blocks else None


@criterion(weight=0.9)
def correct(episode) -> Score:
    """The query's result set equals the gold query's."""
    sql = extract_sql(episode.completion)
    if not sql:
        return Score(0.0, "no ```sql block")
    try:
        _, rows = run_query(sql)
    except QueryError as exc:
        return Score(0.0, f"the query failed: {exc}")
    want = gold_rows(episode.task["sql"])
    ok = same_result(rows, list(want), ordered=episode.task["ordered"])
    return Score(float(ok), f"{len(rows)} rows, {'matching' if ok else 'not matching'} the {len(want)} expected")


@criterion(weight=0.1)
def sql_format(episode) -> Score:
    """Exactly one ```sql block, holding a query that runs."""
    blocks = SQL_BLOCK.findall(episode.completion)
    if len(blocks) != 1 or not blocks[0].strip():
        return Score(0.0, f"{len(blocks)} ```sql blocks, expected one with a query")
    try:
        run_query(blocks[0].strip())
    except QueryError as exc:
        return Score(0.0, f"the query does not run: {exc}")
    return Score(1.0, "one ```sql block with a query that runs")


@functools.cache
def load_questions() -> tuple[dict, ...]:
    return tuple(json.loads(QUESTIONS.read_text(encoding="utf-8")))


class TextToSQL(ChatEnv):
    max_turns = 1
    rubric = Rubric([correct, sql_format], name="sql")

    def tasks(self, split: str) -> list[dict]:
        return [q for q in load_questions() if q["split"] == split]

    def initial_messages(self, task: dict) -> list[dict]:
        return [system(SYSTEM_PROMPT), user(task["question"])]

    def reference_action(self, episode) -> str:
        return f"```sql\n{episode.task['sql']}\n```"


def make_env(**kwargs) -> TextToSQL:
    return TextToSQL(**kwargs)
