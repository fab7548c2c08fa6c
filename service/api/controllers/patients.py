"""Patients, as the front desk finds them: by email, to book on their behalf."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, get
from litestar.openapi.spec import Example
from litestar.params import QueryParameter

from service.api.dependencies import DatabaseDep
from service.api.problems import problem_responses
from service.api.security import requires_staff
from service.core import staff


class PatientOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"id": 12, "name": "Pat Jones", "email": "pat.jones@example.com"}

    id: int
    name: str
    email: str


class PatientController(Controller):
    path = "/patients"
    tags = ["front desk"]

    @get("/", guards=[requires_staff], operation_id="findPatient", summary="Find a patient by email (staff)",
         description=("The patient whose email this is (trimmed and case-folded, as accounts keep it), for "
                      "`patient_id` when booking on their behalf; 404 if no patient has it. Staff only."),
         responses=problem_responses(400, 401, 403, 404, 503))
    async def find(
        self, db: DatabaseDep,
        email: Annotated[str, QueryParameter(min_length=1, max_length=255,
                                             examples=[Example(value="pat.jones@example.com")])],
    ) -> PatientOut:
        return PatientOut(**await staff.find_patient(db, email))
