"""Parameters shared by the endpoints: ids in paths, and the paging and time range of the list endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request
from litestar.params import Parameter, QueryParameter

# The largest id taken: JavaScript's Number.MAX_SAFE_INTEGER, exact in every client and in the OpenAPI document
# (whose bounds are floats: 2^63-1 there reads as 2^63). Far beyond any BIGINT id this service will hand out.
MAX_ID = 2**53 - 1
Id = Annotated[int, Parameter(ge=1, le=MAX_ID, description="An id")]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size (at most 200)")]
Offset = Annotated[int, QueryParameter(ge=0, le=1_000_000, description="Rows to skip")]
# Text parsed by core.times.time_range(): Litestar would read a query `datetime` leniently, taking `0.5` for epoch
# seconds.
RFC3339 = {"format": "date-time"}
From = Annotated[str | None, QueryParameter(name="from", schema_extra=RFC3339,
                                            description="Start of the range (RFC 3339)")]
To = Annotated[str | None, QueryParameter(name="to", schema_extra=RFC3339,
                                          description="End of the range, exclusive (RFC 3339)")]


def next_page_link(request: Request[Any, Any, Any], next_from: datetime | None) -> dict[str, str]:
    """The `Link: <…>; rel="next"` header (RFC 8288) of a schedule read cut short: the same read from `next_from`."""
    if next_from is None:
        return {}
    query = {**dict(request.query_params.items()), "from": next_from.isoformat().replace("+00:00", "Z")}
    return {"Link": f'<{request.url.path}?{urlencode(query)}>; rel="next"'}
