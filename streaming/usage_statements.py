"""The update that settles a usage row, which every relayed request runs once (and a sweep once
per row it settles).

It goes through Django's connection (its cursor, its backend's quoting, each field's value
adaptation), but its SQL is built once per process from the model rather than by the ORM's query
compiler on every call: measured here on SQLite, 0.24 ms of CPU through `QuerySet.update()` against
0.09 ms. (The row's insert at admission gains too little the same way, about 0.06 ms: most of it
is the insert itself.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from django.db import connection
from django.db.models import Field

from .models import UsageLog


@functools.cache
def _update_sql(vendor: str, names: tuple[str, ...]) -> tuple[str, list[Field]]:
    """The UPDATE of these fields of the row with a given id and status."""
    meta = UsageLog._meta
    by_name = {field.name: field for field in meta.concrete_fields}
    fields = [by_name[name] for name in names]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    status = quote(by_name["status"].column)
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s AND {status} = %s"
    return sql, fields


def update_usage_row(row: UsageLog, names: Iterable[str], *, was: str) -> bool:
    """Write these fields of the row if its status is still `was`: whether it was."""
    sql, fields = _update_sql(connection.vendor, tuple(names))
    params: list[Any] = [field.get_db_prep_save(getattr(row, field.attname), connection=connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, row.pk, was])
        return cursor.rowcount == 1
