"""The ASGI app: every route of the route table (sidecar/routes.py) for what the probe fast path on the socket does
not answer itself: other methods (405), unknown paths (404), HEAD and GET of /metrics and /v1/models, requests with
a body, and connections handed over to uvicorn. Read-only: nothing here writes files or starts work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.requests import Request

from downloader.coop.protocol import PATH_PREFIX

from .peers import PeerRoute
from .routes import Answer, Route


def _response(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


def _endpoint(route: Route) -> Callable[[Request], Response | Awaitable[Response]]:
    if route.blocking:  # a plain function: Starlette runs it in its thread pool

        def blocking(_request: Request) -> Response:
            return _response(route.answer())

        return blocking

    async def on_loop(_request: Request) -> Response:
        return _response(route.answer())

    return on_loop


def create_app(routes: Mapping[str, Route], peers: PeerRoute | None = None) -> FastAPI:
    app = FastAPI(title="aibrix-sidecar", openapi_url=None, docs_url=None, redoc_url=None)
    for path, route in routes.items():
        app.router.add_route(path, _endpoint(route), methods=["GET"])
    if peers is not None:  # a cooperative download's members ask for ranges here (sidecar/peers.py)
        app.router.add_route(PATH_PREFIX + "{path:path}", peers.handle, methods=["GET"])
    return app
