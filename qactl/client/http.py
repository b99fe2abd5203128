"""One HTTP client per process for qactl's short probes (health, Flink's REST API).

A new ``httpx`` client costs tens of milliseconds of CPU (it builds an SSL context), more than
the request it makes to a local service; ``qactl status`` and the dashboard probe every
component on each refresh.
"""

from __future__ import annotations

import functools

import httpx


@functools.cache
def shared_client() -> httpx.Client:
    return httpx.Client()
