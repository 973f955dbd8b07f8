"""The Ray Serve deployment: one linker per replica, requests from all clients batched into
one search (`@serve.batch`), bad requests answered with a 4xx before they reach the model.

  POST /link     {"text", "spans": [[start, end], ...], "k"} -> {"mentions": [{mention, start, end,
                 names, ids, scores}, ...]}; header X-Angel-Batch: requests in the search that served it
  GET  /healthz  {"status": "ok", "name", "served", "batches"} (this replica's counts)
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from angel_dist.serve.requests import MAX_BODY_BYTES, LinkRequest, RequestError, parse_link_request


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed MAX_BODY_BYTES."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise RequestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
    return bytes(body)


@serve.deployment
class LinkService:
    def __init__(self, bundle: str, beams: int, max_batch_size: int, batch_wait_s: float, threads: int):
        import torch

        from angel_dist.bundle import read_bundle
        from angel_dist.decode.linker import Linker
        from angel_dist.ray_env import assigned_device

        torch.set_num_threads(max(1, threads))
        # The driver checked the bundle's hashes; a replica checks its files' sizes. The device is
        # the one Ray gave this replica (--gpus-per-replica), the CPU without one.
        self.linker = Linker.from_bundle(bundle, verify=False, beams=beams, device=assigned_device())
        self.name = read_bundle(bundle, verify=False)["name"]
        self.link_batch.set_max_batch_size(max_batch_size)
        self.link_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.served = self.batches = 0

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def link_batch(self, requests: list[LinkRequest]) -> list[tuple[dict, int]]:
        from angel_dist.decode.linker import as_json, text_document

        documents = [text_document(r.text, r.spans) for r in requests]
        # On the event loop, not in a thread: the search is Python-heavy and a thread contending
        # for the GIL with the loop starved it (4 requests a batch at 32 clients, against 20).
        # Requests that arrive meanwhile queue up and form the next batch.
        found = self.linker.link_documents(documents)
        self.served += len(requests)
        self.batches += 1
        return [({"mentions": [as_json(r.text, s, e, p[:r.k]) for (s, e), p in zip(r.spans, predictions)]},
                 len(requests)) for r, predictions in zip(requests, found)]

    async def __call__(self, request: Request) -> JSONResponse:
        path, method = request.url.path, request.method
        if path == "/healthz":
            if method != "GET":
                return _error(405, "use GET /healthz")
            return JSONResponse({"status": "ok", "name": self.name, "served": self.served, "batches": self.batches})
        if path != "/link":
            return _error(404, f"no route {path[:100]!r}: POST /link or GET /healthz")
        if method != "POST":
            return _error(405, "use POST /link")
        try:
            parsed = parse_link_request(await _body(request), self.linker.beams)
        except RequestError as e:
            return _error(e.status, str(e))
        result, batch = await self.link_batch(parsed)
        return JSONResponse(result, headers={"X-Angel-Batch": str(batch)})
