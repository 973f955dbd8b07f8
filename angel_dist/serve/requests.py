"""`POST /link` bodies: checked before anything reaches the model (pure; the service answers a
RequestError with its status and message, never with a 500).

  {"text": "...", "spans": [[start, end], ...], "k": 5}     character offsets into text; k optional
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from angel_dist.decode.linker import spans_problem

MAX_BODY_BYTES = 1 << 20
MAX_SPANS = 256
DEFAULT_K = 5
KEYS = ("text", "spans", "k")


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LinkRequest:
    text: str
    spans: list[tuple[int, int]]
    k: int


def parse_link_request(body: bytes, max_k: int) -> LinkRequest:
    """The request in `body`, or a RequestError: 400 when it is not UTF-8 JSON, 413 when too
    large, 422 when its fields are wrong (types, unknown keys, spans out of the text or inverted,
    k outside 1..max_k)."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"the body is not UTF-8 ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested deeper than the parser goes
        raise RequestError(400, f"the body is not JSON ({str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise RequestError(422, 'expected a JSON object {"text": ..., "spans": [[start, end], ...], "k": ...}')
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise RequestError(422, f"unknown key(s) {', '.join(repr(k)[:60] for k in unknown[:5])}; expected "
                                f"{', '.join(KEYS)}")
    if "text" not in data or "spans" not in data:
        raise RequestError(422, "expected keys 'text' and 'spans'")
    problem = spans_problem(data["text"], data["spans"], MAX_SPANS)
    if problem:
        raise RequestError(422, problem)
    k = data.get("k", min(DEFAULT_K, max_k))
    if type(k) is not int or not 1 <= k <= max_k:
        got = k if type(k) is int else type(k).__name__  # not the value: it may be anything
        raise RequestError(422, f"k must be an integer from 1 to {max_k}, got {got}")
    return LinkRequest(data["text"], [(s, e) for s, e in data["spans"]], k)
