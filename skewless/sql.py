"""Quoting for the DuckDB SQL built from registry names and paths (batch retrieval, materialization).

Names and paths come from the Feast registry, not from users, but a column or file name with a
quote in it must still be read as itself.
"""

from __future__ import annotations


def ident(name: str) -> str:
    """A quoted SQL identifier (a column name)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal (a file path)."""
    return "'" + text.replace("'", "''") + "'"
