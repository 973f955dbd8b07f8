"""Streaming reader for UMLS Rich Release Format files (pipe-separated, plain or gzip).

pyarrow's CSV parser does the work, but its streaming reader cannot tell on which line a
malformed row sits. So the file is cut into blocks at line boundaries here, each block is
parsed by pyarrow, and line numbers are recovered from the block's first
line. Values arrive as binary and are checked for UTF-8 per column, so that undecodable
bytes can be pinned to a line too. Memory is bounded by the block size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from tqdm import tqdm

from angel_dist.errors import BadInputError, BadInputPolicy

BLOCK_BYTES = 64 << 20


def find_rrf(directory: Path, name: str) -> Path | None:
    """`name` in a META directory, plain or gzip-compressed."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.exists():
            return candidate
    return None


def _blocks(path: Path, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield (number of lines before the block, block) with blocks ending at a newline."""
    lines_before = 0
    carry = b""
    with pa.input_stream(str(path)) as stream:  # decompresses .gz by extension
        while True:
            try:
                chunk = stream.read(block_bytes)
            except OSError as e:  # the decompressor's message names neither the file nor where
                read = lines_before + carry.count(b"\n")
                raise BadInputError(str(path), None, f"corrupt or truncated compressed data after line {read}: "
                                                     f"{e}") from None
            if not chunk:
                break
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            yield lines_before, block
            lines_before += block.count(b"\n")
    if carry:
        yield lines_before, carry


def read_rrf(
    path: Path,
    columns: Sequence[str],
    keep: Sequence[str],
    policy: BadInputPolicy,
    block_bytes: int = BLOCK_BYTES,
    progress: bool = True,
) -> Iterator[pa.Table]:
    """Yield tables of the `keep` columns (as strings) of an RRF file with `columns` fields.

    Every RRF line ends with a `|`, so a well-formed line has len(columns) + 1 fields.
    """
    names = list(columns) + ["__trailing"]
    size = os.path.getsize(path) if not str(path).endswith(".gz") else None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=Path(path).name, disable=not progress, leave=False)
    try:
        for lines_before, block in _blocks(Path(path), block_bytes):
            yield _parse_block(path, block, lines_before, names, list(keep), policy)
            bar.update(len(block))
    finally:
        bar.close()


def _parse_block(path, block: bytes, lines_before: int, names, keep, policy) -> pa.Table:
    dropped: list[tuple[int, int]] = []
    if not _is_utf8(block):
        # pyarrow cannot hand a row with undecodable bytes to the invalid-row handler: count fields here.
        block, dropped = _drop_malformed(block, lines_before, len(names))
        _report(path, dropped, len(names), policy)
    found: list[tuple[int | None, int]] = []  # (line, fields) of each malformed row, in file order
    search_from = 0

    def invalid_row(row):
        nonlocal search_from
        # The handler is told the row's text but not its position: find it in the block.
        pos = block.find(row.text.encode("utf-8"), search_from)
        line = lines_before + block.count(b"\n", 0, pos) + 1 if pos >= 0 else None
        search_from = pos + 1 if pos >= 0 else search_from
        found.append((line, row.actual_columns))
        # Reported after the read: pyarrow swallows what a handler raises.
        return "error" if policy.mode == "error" else "skip"

    try:
        table = _read_block(block, names, keep, invalid_row)
    except pa.ArrowInvalid as e:
        _report(path, found, len(names), policy)  # in error mode the handler stopped the read at the first
        raise BadInputError(str(path), None, f"unreadable as RRF after line {lines_before}: {e}") from None
    _report(path, found, len(names), policy)
    skipped = sorted([line for line, _ in dropped] + [line if line is not None else -1 for line, _ in found])
    return _decode_utf8(path, table, lines_before, skipped, policy)


def _is_utf8(block: bytes) -> bool:
    """Whether the block is valid UTF-8, checked by Arrow in place."""
    offsets = pa.py_buffer(np.array([0, len(block)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _report(path, found, n_fields: int, policy) -> None:
    for line, fields in found:
        policy.bad(str(path), line, f"expected {n_fields} '|'-separated fields (a trailing '|' included), found {fields}")


def _drop_malformed(block: bytes, lines_before: int, n_fields: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The block without its lines of another field count, and (line, fields) of those. A line with a
    carriage return inside is dropped too: pyarrow would read it as two rows."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()
    bad = {i for i, line in enumerate(lines) if line.count(b"|") + 1 != n_fields or b"\r" in line[:-1]}
    found = [(lines_before + i + 1, lines[i].count(b"|") + 1) for i in sorted(bad)]
    return b"".join(line + b"\n" for i, line in enumerate(lines) if i not in bad), found


def _read_block(block: bytes, names, keep, invalid_row) -> pa.Table:
    if not block:  # pyarrow refuses an empty CSV
        return pa.schema([(c, pa.binary()) for c in keep]).empty_table()
    return pcsv.read_csv(
        pa.py_buffer(block),
        # Single-threaded so that the invalid-row handler is called in file order.
        read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
        parse_options=pcsv.ParseOptions(delimiter="|", quote_char=False, escape_char=False,
                                        ignore_empty_lines=False, invalid_row_handler=invalid_row),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.binary() for c in keep},
                                            include_columns=keep, check_utf8=False),
    )


def _decode_utf8(path, table: pa.Table, lines_before: int, skipped_lines, policy) -> pa.Table:
    try:
        return pa.table({c: table[c].cast(pa.string()) for c in table.column_names})
    except pa.ArrowInvalid:
        pass
    # Rare path: locate the undecodable rows in Python.
    ok = np.ones(table.num_rows, dtype=bool)
    for name in table.column_names:
        for i, value in enumerate(table[name].to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as e:
                if ok[i]:
                    ok[i] = False
                    policy.bad(str(path), _line_of_row(i, lines_before, skipped_lines),
                               f"undecodable bytes in field {name} ({e.reason} at byte {e.start})")
    table = table.filter(pa.array(ok))
    return pa.table({c: table[c].cast(pa.string()) for c in table.column_names})


def _line_of_row(row: int, lines_before: int, skipped_lines) -> int:
    """1-based line of the `row`-th parsed row, given the lines skipped as malformed."""
    line = lines_before + row + 1
    for skipped in skipped_lines:
        if skipped <= line:
            line += 1
    return line
