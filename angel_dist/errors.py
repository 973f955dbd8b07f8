"""Bad input: errors that name the file and line, or a counted skip when the user asks."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

OnBadInput = Literal["error", "skip"]


class BadInputError(ValueError):
    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Pickled from a Ray worker to the driver: rebuilt from its fields, not from the message.
        return type(self), (self.path, self.line, self.problem)


@dataclass
class BadInputPolicy:
    """Raise on the first bad record, or count and remember a few when `mode == "skip"`."""

    mode: OnBadInput = "error"
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 10

    def __post_init__(self):
        if self.mode not in ("error", "skip"):
            raise ValueError(f"on_bad_input must be 'error' or 'skip', got {self.mode!r}")

    def bad(self, path: str, line: int | None, problem: str) -> None:
        err = BadInputError(path, line, problem)
        if self.mode == "error":
            raise err
        self.skipped[str(path)] = self.skipped.get(str(path), 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def report(self, stream=None) -> None:
        if not self.total_skipped:
            return
        stream = stream or sys.stderr
        print(f"skipped {self.total_skipped} bad input record(s):", file=stream)
        for path, n in sorted(self.skipped.items()):
            print(f"  {path}: {n}", file=stream)
        for example in self.examples:
            print(f"  e.g. {example}", file=stream)


def read_json(path, expected: str):
    """The JSON value in `path`; a file that is not JSON raises BadInputError naming it and what
    was `expected` there."""
    import json

    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadInputError(path, None, f"expected {expected} (JSON): {type(e).__name__}: {e}") from None
