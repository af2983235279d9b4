"""One HTTP client for the plain-HTTP calls a test process makes to the servers it started.

The module-level `httpx` helpers (get, post, ...) build a client per call, and every new client
loads the CA bundle into a fresh SSL context: ~20-40 ms of CPU even for an http:// URL.
Readiness polls made that way were the largest CPU cost of the test processes themselves
(py-spy over a whole parallel run: ~2 CPU-minutes in `ssl.create_default_context`). No
keep-alive: the servers here are killed and restarted under the tests, and a pooled connection
would outlive them. Calls that need their own TLS settings (`verify=`) build their own client.
"""

from __future__ import annotations

import httpx

LOOPBACK = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
