"""The migration order of a run's task ledger, and the pages a distributed engine reads it in.

SQL only (SQLAlchemy and the catalog's tables, no torch or FAISS): Ray workers import this to read
their page of the ledger, and start faster for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from index.catalog import BackfillTask

# Ties by task id, which plan() assigns in item id order: unlike item_id, it is in the
# (run_id, state, priority) index (as SQLite's rowid), so no sort per wave.
MIGRATION_ORDER = (BackfillTask.priority, BackfillTask.id)
Key = tuple[float, int]  # (priority, task id): a position in the migration order


def pending_tasks(run_id: int) -> Select[int]:
    """The run's pending items in migration order, the one order every engine follows."""
    return (
        select(BackfillTask.item_id)
        .where(BackfillTask.run_id == run_id, BackfillTask.state == "pending")
        .order_by(*MIGRATION_ORDER)
    )


def page_bounds(session: Session, run_id: int, page_size: int) -> list[Key]:
    """Every ``page_size``-th pending task's key, in migration order: page i holds the tasks
    after key i-1 up to key i (the last page: everything after the last key). One scan done by
    the database; the caller holds total/page_size keys, never the ledger."""
    rank = func.row_number().over(order_by=MIGRATION_ORDER).label("rank")
    ranked = (
        select(*MIGRATION_ORDER, rank)
        .where(BackfillTask.run_id == run_id, BackfillTask.state == "pending")
        .subquery()
    )
    query = (
        select(ranked.c.priority, ranked.c.id)
        .where(ranked.c.rank % page_size == 0)
        .order_by(ranked.c.rank)
    )
    return [(float(p), int(i)) for p, i in session.execute(query)]


def page(run_id: int, bounds: list[Key], number: int) -> Select[Any]:
    """Page ``number`` (0 ... len(bounds)) of the pending tasks, in migration order."""
    key = tuple_(*MIGRATION_ORDER)
    query = pending_tasks(run_id)
    if number > 0:
        query = query.where(key > tuple_(*bounds[number - 1]))
    if number < len(bounds):
        query = query.where(key <= tuple_(*bounds[number]))
    return query
