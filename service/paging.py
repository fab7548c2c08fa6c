"""Query parameters shared by the list endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar.params import Parameter

from service.errors import InvalidInput
from service.times import to_db

Limit = Annotated[int, Parameter(ge=1, le=200, description="Page size (at most 200)")]
Offset = Annotated[int, Parameter(ge=0, le=1_000_000, description="Rows to skip")]
From = Annotated[datetime | None, Parameter(query="from", description="Start of the range (RFC 3339)")]
To = Annotated[datetime | None, Parameter(query="to", description="End of the range, exclusive (RFC 3339)")]


def time_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    """The optional [from, to) filter as naive UTC, refusing an empty or inverted range."""
    start_db = to_db(start, "from") if start else None
    end_db = to_db(end, "to") if end else None
    if start_db and end_db and end_db <= start_db:
        raise InvalidInput("must be after from", field="to")
    return start_db, end_db
