"""The inference engine as the sidecar sees it over HTTP: its /health (polled), its metrics (passed through on each
scrape) and its /v1/models (proxied, as AIBrix's runtime sidecar does). One client, shared by the poll thread and
the request threads."""

from __future__ import annotations

import httpx

from .snapshot import EngineState


class Engine:
    def __init__(self, url: str, metrics_path: str, timeout: float) -> None:
        self.url = url
        self.metrics_path = metrics_path
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)

    def health(self) -> EngineState:
        try:
            r = self._http.get(self.url + "/health")
        except httpx.HTTPError as exc:
            return EngineState(False, f"engine not answering ({type(exc).__name__})")
        return EngineState(r.status_code == 200, f"/health answered {r.status_code}")

    def metrics(self) -> str | None:
        """The engine's own metrics text, or None when it does not answer them."""
        try:
            r = self._http.get(self.url + self.metrics_path)
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None

    def models(self) -> httpx.Response:
        """The engine's GET /v1/models. Raises httpx.HTTPError when it does not answer."""
        return self._http.get(self.url + "/v1/models")

    def close(self) -> None:
        self._http.close()
