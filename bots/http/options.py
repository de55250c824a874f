"""HTTP adapter settings, from the environment: where it listens and which API keys it takes."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, HTTPException

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 7870
    api_keys: frozenset[str] = frozenset()
    media_ttl_s: float = 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpOptions:
        """TALKTWIN_HTTP_HOST / _PORT, TALKTWIN_API_KEYS (comma-separated). Keys are required beyond
        loopback: a server reachable from the network without them refuses to start."""
        host = environ.get("TALKTWIN_HTTP_HOST", cls.host).strip() or cls.host
        try:
            port = int(environ.get("TALKTWIN_HTTP_PORT", cls.port))
        except ValueError:
            raise ConfigError("TALKTWIN_HTTP_PORT: expected a port number") from None
        keys = frozenset(k.strip() for k in environ.get("TALKTWIN_API_KEYS", "").split(",") if k.strip())
        if not keys and not _is_loopback(host):
            raise ConfigError(
                f"TALKTWIN_HTTP_HOST={host} is reachable beyond this machine: set TALKTWIN_API_KEYS too"
            )
        return cls(host=host, port=port, api_keys=keys)

    def key_check(self) -> Callable[..., None]:
        """The API's dependency: an `X-API-Key` or `Authorization: Bearer` header with one of the
        keys, when there are keys (else everyone is let in: the server is on loopback)."""

        def authorised(
            authorization: Annotated[str | None, Header()] = None,
            x_api_key: Annotated[str | None, Header()] = None,
        ) -> None:
            if not self.api_keys:
                return
            given = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
            if not any(secrets.compare_digest(given, key) for key in self.api_keys):
                raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

        return authorised


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
