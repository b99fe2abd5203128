"""The admin API: fault rules and call statistics, behind a bearer token.

The token is ``gateway.admin_token``: generated at the first `qactl up` and kept under the state
dir; there is no built-in default, and without a token every admin request is refused.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError

from services.llm_gateway.faults import ActiveRule, FaultRule

_bearer = HTTPBearer(auto_error=False)


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token = request.app.state.gateway.admin_token
    if token is None:  # no built-in default: a gateway started without one has no admin API
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin API is disabled: no admin token is configured")
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(prefix="/admin", dependencies=[Depends(require_token)], tags=["admin"])


_rule_list: TypeAdapter[list[FaultRule]] = TypeAdapter(list[FaultRule])


@router.post("/faults", status_code=status.HTTP_201_CREATED)
async def add_faults(request: Request) -> dict[str, list[ActiveRule]]:
    """Add one rule or a list of rules (JSON, whatever the content type says); they apply in
    order of creation. Body: ``{"kind": "503", "count": 3, "retry_after": 1}``."""
    raw = await request.body()
    try:
        if raw.lstrip().startswith(b"["):
            rules = _rule_list.validate_json(raw)
        else:
            rules = [FaultRule.model_validate_json(raw)]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise HTTPException(422, f"invalid fault rule: {problems}") from None
    book = request.app.state.gateway.faults
    added = [book.add(rule) for rule in rules]
    return {"rules": added}


@router.get("/faults")
def list_faults(request: Request) -> dict[str, list[ActiveRule]]:
    return {"rules": request.app.state.gateway.faults.rules()}


@router.delete("/faults")
def clear_faults(request: Request) -> dict[str, int]:
    return {"cleared": request.app.state.gateway.faults.clear()}


@router.get("/stats")
def stats(request: Request) -> dict[str, Any]:
    return request.app.state.gateway.stats.snapshot()


@router.delete("/stats")
def reset_stats(request: Request) -> dict[str, bool]:
    request.app.state.gateway.stats.reset()
    return {"reset": True}
