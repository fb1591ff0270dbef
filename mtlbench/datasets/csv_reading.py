"""Reading published CSV files: streaming and columnar, with checks that name the file, column and line.

Every real dataset reads its text files through :func:`read_csv`. pyarrow's streaming CSV reader parses the
file block by block (multi-threaded; never a Python loop over rows) under a progress bar on stderr, and each
block is converted at once into preallocated numpy outputs (sized by a fast line count) and dropped: memory
holds the final columns plus one block, never the whole parsed table (and while a cache entry is built the
columns are on disk, :mod:`mtlbench.data.spill`, so memory holds one block). Categorical columns are parsed as
dictionary blocks and get ids as they stream by (:class:`~mtlbench.datasets.vocabulary.CategoryBuilder`).

Before parsing, the first line is checked: an empty file, a missing or misspelt column, a duplicated header
name or a file separated by another delimiter than the format's each end in one
:class:`~mtlbench.errors.DataError` line that names the file, the column and the line. Conversion errors (a
word in a number column, a header line repeated inside the data) are located by a second, columnar pass over
the one column that failed, so the message can name the first offending line. Line numbers count physical
lines with the header as line 1; blank lines are skipped by the parser and not counted, and quoted fields
with embedded newlines (none of the supported formats has them) would shift them.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mtlbench.datasets.files import check_file, is_gzip, open_binary
from mtlbench.datasets.progress import ProgressBar
from mtlbench.datasets.raw_file import Kind, NumberSink, RawFile
from mtlbench.datasets.vocabulary import Categories, CategoryBuilder, dictionary_indices
from mtlbench.errors import DataError

#: arrow type each kind is parsed to: categories stay strings until re-indexed; labels may be empty (NaN)
ARROW_TYPES: dict[str, pa.DataType] = {
    "cat": pa.dictionary(pa.int32(), pa.string()),
    "int": pa.int64(),
    "float": pa.float32(),
    "label": pa.float32(),
}
#: cell texts read as "missing" (null): empty cells and the usual spellings of NaN / NA
NULL_VALUES = ["", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null"]
BLOCK_SIZE = 8 << 20  # bytes per parsed block
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", "::": "'::'", " ": "space"}
#: arrow's pool for the parsed blocks; they are transient, and released after each file (release_memory)
POOL = pa.default_memory_pool()


@dataclass(frozen=True)
class Layout:
    """How a publisher lays out one file.

    ``names`` is the published column order of a file without a header line (``None``: the first line
    is the header). ``delimiter`` may be several characters (MovieLens 1M's ``::``).
    """

    delimiter: str = ","
    names: tuple[str, ...] | None = None
    encoding: str = "utf8"

    @property
    def header(self) -> bool:
        """Whether the file's first line is a header."""
        return self.names is None


def first_line(path: Path, encoding: str = "utf8") -> str:
    """The file's first line (decompressed, decoded, without BOM and line break)."""
    try:
        with open_binary(path) as f:
            raw = f.readline(1 << 20)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    codec = "utf-8-sig" if encoding.replace("-", "").lower() == "utf8" else encoding
    line = raw.decode(codec, errors="replace").rstrip("\r\n")
    if not line.strip():
        raise DataError(f"{path}: line 1 is empty (an empty file or a blank first line)")
    return line


def split_line(line: str, delimiter: str) -> list[str]:
    """The fields of one line (quotes honoured for a one-character delimiter)."""
    if len(delimiter) > 1:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter))


def _delim(d: str) -> str:
    return DELIMITER_NAMES.get(d, repr(d))


def _other_delimiter(line: str, delimiter: str, fits: Any) -> str | None:
    """Another common delimiter under which the line fits the format (``fits(fields) -> bool``)."""
    for other in DELIMITER_NAMES:
        if other != delimiter and other != " " and other in line and fits(split_line(line, other)):
            return other
    return None


def check_header(path: Path, line: str, layout: Layout, wanted: Sequence[str]) -> list[str]:
    """Check the first line against the format; return the file's column names in file order."""
    d = layout.delimiter
    fields = [f.strip() for f in split_line(line, d)]
    if not layout.header:
        names = list(layout.names or ())
        if len(fields) != len(names):
            other = _other_delimiter(line, d, lambda fs: len(fs) == len(names))
            if other:
                raise DataError(
                    f"{path}: line 1: the file is {_delim(other)}-separated, but this format is "
                    f"{_delim(d)}-separated (column {names[0]!r} onwards cannot be read)"
                )
            raise DataError(
                f"{path}: line 1 has {len(fields)} {_delim(d)}-separated fields, this format has "
                f"{len(names)} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
            )
        return names
    seen: set[str] = set()
    for f in fields:
        if f in seen:
            raise DataError(f"{path}: line 1 (header): column {f!r} appears twice (duplicated header)")
        seen.add(f)
    missing = [c for c in wanted if c not in seen]
    if missing:
        other = _other_delimiter(line, d, lambda fs: missing[0] in [f.strip() for f in fs])
        if other:
            raise DataError(
                f"{path}: line 1: column {missing[0]!r} not found because the file is "
                f"{_delim(other)}-separated; this format is {_delim(d)}-separated"
            )
        close = difflib.get_close_matches(missing[0], fields, n=1, cutoff=0.6)
        hint = f" (the header has {close[0]!r}: misspelt?)" if close else ""
        shown = ", ".join(fields[:10]) + (", ..." if len(fields) > 10 else "")
        raise DataError(f"{path}: line 1 (header): missing column {missing[0]!r}{hint}; the header is: {shown}")
    return fields


@contextmanager
def _stream(path: Path, layout: Layout) -> Iterator[tuple[Any, Any, int]]:
    """(arrow input stream, raw file whose position drives the progress bar, raw size in bytes)."""
    size = path.stat().st_size
    if len(layout.delimiter) > 1:  # pyarrow parses single-character delimiters: substitute one
        yield pa.BufferReader(_substituted(path, layout)), None, size
        return
    raw = pa.OSFile(str(path), "rb")
    try:
        stream = pa.CompressedInputStream(raw, "gzip") if is_gzip(path) else raw
        yield stream, raw, size
    finally:
        raw.close()


def _substituted(path: Path, layout: Layout) -> bytes:
    with open_binary(path) as f:
        return f.read().replace(layout.delimiter.encode(), b"\x1f")


def count_lines(path: Path, layout: Layout) -> int:
    """Physical lines of the file (an upper bound of its rows), in one fast pass without parsing."""
    if len(layout.delimiter) > 1:
        data = _substituted(path, layout)
        return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    n, last = 0, b"\n"
    with open_binary(path) as f:
        while block := f.read(16 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def _options(
    layout: Layout, columns: Mapping[str, str], use_threads: bool = True, invalid_row_handler: Any = None
) -> tuple[Any, Any, Any]:
    read = pacsv.ReadOptions(
        column_names=list(layout.names) if layout.names else None,
        block_size=BLOCK_SIZE,
        encoding=layout.encoding,
        use_threads=use_threads,
    )
    delim = "\x1f" if len(layout.delimiter) > 1 else layout.delimiter
    parse = pacsv.ParseOptions(delimiter=delim, invalid_row_handler=invalid_row_handler)
    convert = pacsv.ConvertOptions(
        include_columns=list(columns),
        column_types={c: ARROW_TYPES[k] for c, k in columns.items()},
        null_values=NULL_VALUES,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    return read, parse, convert


def read_csv(
    path: str | os.PathLike,
    columns: Mapping[str, Kind],
    layout: Layout = Layout(),
    max_rows: int | None = None,
    desc: str | None = None,
) -> RawFile:
    """Read the named ``columns`` of one published CSV file (gzip allowed), streaming and columnar.

    ``columns`` maps a column name (as in the header, or in ``layout.names``) to its kind: ``cat``
    (a category, see :class:`~mtlbench.datasets.vocabulary.Categories`), ``int``, ``float`` or ``label``
    (float, 0/1/empty, checked by :meth:`RawFile.label`). ``max_rows`` stops after that many data rows.

    Each parsed block is converted at once into preallocated output arrays (sized by a quick line count)
    and dropped, so memory holds the outputs plus one block, never the whole parsed table.
    """
    path = Path(path).expanduser()
    check_file(path)
    line = first_line(path, layout.encoding)
    names = check_header(path, line, layout, list(columns))
    start_line = 2 if layout.header else 1
    capacity = max(0, count_lines(path, layout) - (start_line - 1))
    if max_rows is not None:
        capacity = min(capacity, int(max_rows))
    sinks = {
        c: CategoryBuilder(capacity) if k == "cat" else NumberSink(capacity, np.int64 if k == "int" else np.float32)
        for c, k in columns.items()
    }
    cats = [c for c, k in columns.items() if k == "cat"] if layout.header else []
    n = 0
    with _stream(path, layout) as (stream, raw, size):
        bar = ProgressBar(size, desc or f"reading {path.name}")
        try:
            for batch in pacsv.open_csv(stream, *_options(layout, columns), memory_pool=POOL):
                if n + batch.num_rows > capacity:
                    batch = batch.slice(0, capacity - n)
                if cats:
                    _check_repeated_header(batch, cats, path, start_line + n)
                for name, arr in zip(batch.schema.names, batch.columns):
                    sinks[name].add(arr, n)
                n += batch.num_rows
                if raw is not None:
                    bar.to(raw.tell())
                if n >= capacity:
                    break
        except pa.ArrowInvalid as e:
            bar.close()
            raise _explain(path, layout, columns, names, start_line, e) from None
        bar.close()
    if n == 0:
        raise DataError(f"{path}: the file has no data rows" + (" after the header (line 1)" if layout.header else ""))
    out: dict[str, Categories | np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    for c, sink in sinks.items():
        if isinstance(sink, CategoryBuilder):
            out[c] = sink.finish(n)
        else:
            out[c], mask = sink.finish(n)
            if mask is not None:
                nulls[c] = mask
    release_memory()
    return RawFile(path, out, start_line, nulls)


def _check_repeated_header(batch: pa.RecordBatch, cats: list[str], path: Path, line0: int) -> None:
    """A header line repeated inside the data of text columns (no conversion error would catch it)."""
    first = batch.column(batch.schema.get_field_index(cats[0]))
    pos = pc.index(first.dictionary, cats[0]).as_py()
    if pos < 0:
        return
    for row in np.flatnonzero(dictionary_indices(first) == pos)[:100]:
        if all(batch.column(batch.schema.get_field_index(c))[int(row)].as_py() == c for c in cats[1:]):
            raise DataError(
                f"{path}: line {line0 + int(row)}: the header line appears again inside the "
                f"data (column {cats[0]!r} has value {cats[0]!r}; duplicated header, e.g. "
                "concatenated files?)"
            )


def _explain(
    path: Path, layout: Layout, columns: Mapping[str, str], names: list[str], start_line: int, error: pa.ArrowInvalid
) -> DataError:
    """Turn a pyarrow parse/conversion error into one line naming the file, column and first bad line."""
    msg = str(error).strip().splitlines()[0]
    m = re.search(
        r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+): "
        r"invalid value '(.*)'$",
        msg,
    )
    if m:
        idx, target, value = int(m.group(1)), m.group(3), m.group(4)
        name = names[idx] if idx < len(names) else f"#{idx}"
        # pyarrow names the physical line only sometimes; otherwise find it in a pass over that column
        row = int(m.group(2)) - start_line if m.group(2) else _find_value(path, layout, name, value)
        where = f"{path}: line {start_line + row}" if row >= 0 else str(path)
        what = "an integer" if "int" in target else "a number"
        if value.strip() == name:
            return DataError(
                f"{where}: the header line appears again inside the data (column {name!r} has "
                f"value {value!r}; duplicated header, e.g. concatenated files?)"
            )
        hint = "; this format has no header line, remove it" if not layout.header and row == 0 else ""
        return DataError(f"{where}: column {name!r} has {value!r}, expected {what}{hint}")
    if "CSV parse error" in msg:
        bad: list[Any] = []

        def handler(row: Any) -> str:
            bad.append(row)
            return "error"

        try:
            with _stream(path, layout) as (stream, _, _):
                for _ in pacsv.open_csv(stream, *_options(layout, {names[0]: "cat"}, False, handler)):
                    pass
        except pa.ArrowInvalid:
            pass
        if bad:
            row = bad[0]
            line = row.number if row.number is not None else "?"
            text = row.text if len(row.text) <= 60 else row.text[:57] + "..."
            return DataError(
                f"{path}: line {line}: {row.actual_columns} fields where the format has "
                f"{row.expected_columns} (column {names[-1]!r} is the last): {text!r}"
            )
    return DataError(f"{path}: cannot be read as {_delim(layout.delimiter)}-separated text: {msg}")


def _find_value(path: Path, layout: Layout, column: str, value: str) -> int:
    """Data row of the first cell of ``column`` whose text is ``value`` (-1 if none), in one columnar pass."""
    offset = 0
    with _stream(path, layout) as (stream, _, _):
        read, parse, _ = _options(layout, {column: "cat"})
        convert = pacsv.ConvertOptions(
            include_columns=[column], column_types={column: pa.string()}, strings_can_be_null=False
        )
        for batch in pacsv.open_csv(stream, read, parse, convert):
            equal = pc.equal(batch.column(0), value).fill_null(False)
            hits = np.flatnonzero(equal.to_numpy(zero_copy_only=False))
            if len(hits):
                return offset + int(hits[0])
            offset += batch.num_rows
    return -1


def release_memory() -> None:
    """Hand memory freed by arrow back to the OS, so numpy (another allocator) can use it."""
    pa.default_memory_pool().release_unused()
    POOL.release_unused()
