"""The local cloud's local-only API: what Azure's service APIs do not serve. Bearer-token protected.

Everything Azure has is served the way Azure serves it (rest_api.py, arm_api.py, amqp/). What is left has no
Azure service-API counterpart (docs/local-cloud.md "Local-only API"):
  * GET /telemetry: read back the telemetry the hub stored, by device, the newest N or after a sequence
    number, in one synchronous call (Azure's way, the Event Hubs-compatible endpoint, is a stream per
    partition);
  * /consumerGroups: the Event Hubs-compatible endpoint's consumer groups (Azure manages them through ARM on
    the IoT hub resource, Microsoft.Devices/IotHubs/eventHubEndpoints/events/ConsumerGroups: not served here).
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from client_app.cloud.errors import CloudError
from client_app.cloud.hub.hub import Hub
from client_app.cloud.service.http_server import BodyLimit

log = logging.getLogger("client_app.cloud.service.bearer_api")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def create_app(hub: Hub, token: str) -> FastAPI:
    app = FastAPI(
        title="client-app-cloud local-only API",
        version="2",
        description="Local IoT Hub extras Azure's service APIs do not have. Every route needs "
        "`Authorization: Bearer <api_token>`.",
    )

    def authorize(credentials: Credentials) -> None:
        # Bytes: compare_digest raises on a non-ASCII str, and a header may carry any latin-1 text.
        presented = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if credentials is None or not secrets.compare_digest(presented, token.encode()):
            raise CloudError(401, 401001, "missing or wrong API token (Authorization: Bearer <api_token>)")

    router = APIRouter(dependencies=[Depends(authorize)])
    _install_error_handlers(app)
    _telemetry_routes(router, hub)
    app.include_router(router)
    app.add_middleware(BodyLimit)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudError)
    async def cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        log.warning("API %s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # its loc is a character offset, meaningless as a field name
            reason = first.get("ctx", {}).get("error", "decode error")
            message = f"invalid request: the body is not JSON ({reason})"
        else:
            where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
            message = f"invalid request: {where + ': ' if where else ''}{first.get('msg')}"
        log.warning("API %s %s -> 400 %s", request.method, request.url.path, message)
        return JSONResponse({"errorCode": 400000, "message": message}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"errorCode": exc.status_code * 1000, "message": str(exc.detail)}, exc.status_code
        )


def _telemetry_routes(router: APIRouter, hub: Hub) -> None:
    @router.get("/consumerGroups", tags=["telemetry"])
    async def consumer_groups() -> dict[str, Any]:
        return {"value": hub.consumer_groups()}

    @router.put("/consumerGroups/{name}", tags=["telemetry"])
    async def add_consumer_group(name: str) -> dict[str, Any]:
        return hub.add_consumer_group(name)

    @router.delete("/consumerGroups/{name}", status_code=204, tags=["telemetry"])
    async def delete_consumer_group(name: str) -> None:
        hub.delete_consumer_group(name)

    @router.get("/telemetry", tags=["telemetry"])
    async def telemetry(
        deviceId: str | None = None,
        after: Annotated[
            int, Query(ge=0, le=2**63 - 1, description="return messages with sequenceNumber > after")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        tail: Annotated[
            int | None, Query(ge=1, le=1000, description="only the newest N (ignores after)")
        ] = None,
    ) -> dict[str, Any]:
        messages = hub.telemetry(deviceId, after, limit, tail=tail)
        return {"value": messages, "last": messages[-1]["sequenceNumber"] if messages else after}
