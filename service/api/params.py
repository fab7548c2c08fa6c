"""Parameters shared by the endpoints: ids in paths, and the paging and time range of the list endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, get_args
from urllib.parse import urlencode

from litestar import Request
from litestar.openapi.spec import Example, OpenAPIFormat, OpenAPIType
from litestar.params import Parameter, QueryParameter

from service.core.appointments import AppointmentStatus, RequestStatus

# The largest id taken: JavaScript's Number.MAX_SAFE_INTEGER, exact in every client and in the OpenAPI document
# (whose bounds are floats: 2^63-1 there reads as 2^63). Far beyond any BIGINT id this service will hand out.
MAX_ID = 2**53 - 1
Id = Annotated[int, Parameter(ge=1, le=MAX_ID, description="An id")]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size (at most 200)")]
Offset = Annotated[int, QueryParameter(ge=0, le=1_000_000, description="Rows to skip")]
# A time in a query is text parsed by core.times (Litestar would read a query `datetime` leniently, taking `0.5` for
# epoch seconds), documented as what it is: an RFC 3339 date-time, so generated clients take a datetime. A query cannot
# carry null, so the schema is the string alone, not Litestar's `oneOf [string, null]` (where the format would sit
# outside the string, and generators type the parameter a plain str).
QUERY_TIME = {"type": OpenAPIType.STRING, "format": OpenAPIFormat.DATE_TIME, "one_of": None}


def query_time(name: str, description: str, example: str) -> QueryParameter:
    return QueryParameter(name=name, schema_extra=QUERY_TIME, description=description,
                          examples=[Example(value=example)])


From = Annotated[str | None, query_time("from", "Start of the range (RFC 3339)", "2030-01-15T00:00:00Z")]
To = Annotated[str | None, query_time("to", "End of the range, exclusive (RFC 3339)", "2030-01-16T00:00:00Z")]


def choice_filter(choices: Any, description: str) -> QueryParameter:
    """An optional query parameter taking one of a Literal's values, documented as a string enum: Litestar writes
    `type: [null, string]` with null among the values, which openapi-python-client turns into a required parameter
    of three anonymous types (and the API refuses `null` there: extensions.query_rule)."""
    return QueryParameter(schema_extra={"type": OpenAPIType.STRING, "enum": list(get_args(choices)), "one_of": None},
                          description=description)


AppointmentStatusFilter = Annotated[AppointmentStatus | None,
                                    choice_filter(AppointmentStatus, "Only appointments of this status")]
RequestStatusFilter = Annotated[RequestStatus | None, choice_filter(RequestStatus, "Only requests of this status")]


def next_page_link(request: Request[Any, Any, Any], next_from: datetime | None) -> dict[str, str]:
    """The `Link: <…>; rel="next"` header (RFC 8288) of a schedule read cut short: the same read from `next_from`."""
    if next_from is None:
        return {}
    query = {**dict(request.query_params.items()), "from": next_from.isoformat().replace("+00:00", "Z")}
    return {"Link": f'<{request.url.path}?{urlencode(query)}>; rel="next"'}
