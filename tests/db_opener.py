"""A process that opens a memory database when told to (tests/test_memory.py starts several at once)."""

from typing import Any


def open_database(url: str, start: Any, results: Any) -> None:
    """Wait at `start` (a Barrier), open `url` with make_engine, put the number of tables (or the
    error) on `results`."""
    from sqlalchemy import inspect

    from memory.db import make_engine

    start.wait(60)
    try:
        engine = make_engine(url)
        results.put(len(inspect(engine).get_table_names()))
        engine.dispose()
    except Exception as e:
        results.put(repr(e)[:200])
