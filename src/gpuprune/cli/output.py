"""Shared CLI output helpers: rich tables for people, JSON for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Wide when piped (CI logs, files) so tables do not wrap into unreadable columns.
console = Console(width=None if sys.stdout.isatty() else 160)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console.print(table)


def print_json(data: Any) -> None:
    # plain print: rich would wrap long lines and break the JSON
    print(json.dumps(data, indent=2, sort_keys=False))
