"""A CSV as text cells, with the structural errors users see: encoding, ragged rows, header names, line numbers.

pandas reads the cells (every cell as text, blank = ''); the `csv` module re-reads the file only to check the header
and, when an error needs it, to find the file line of a row (pandas skips blank lines and a quoted field may span
lines, so row + 2 is not always the line).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.errors import UserError, first_line

_MAX_SHOWN = 5


def rows_text(lines) -> str:
    """'line(s) ...' for the first offending rows, given their CSV line numbers."""
    lines = list(lines)
    shown = ", ".join(str(int(i)) for i in lines[:_MAX_SHOWN])
    more = f" (+{len(lines) - _MAX_SHOWN} more)" if len(lines) > _MAX_SHOWN else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def _records(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """(file line on which it starts, fields) of every non-blank record, header included, as pandas sees them."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader, prev = csv.reader(f), 0
        for rec in reader:
            if len(rec) > 1 or (rec and rec[0].strip()):
                yield prev + 1, rec
            prev = reader.line_num


def line_numbers(csv_path: Path, n_rows: int) -> np.ndarray:
    """CSV line (header = line 1) on which each data row starts. Only computed when an error needs it."""
    starts = [line for line, _ in _records(csv_path)][1:]  # drop the header
    if len(starts) != n_rows:  # the csv module and pandas disagree on some odd file: keep the simple count
        return np.arange(n_rows) + 2
    return np.asarray(starts)


def header_fields(csv_path: Path) -> list[str]:
    """The header's fields, stripped, as the csv module reads them (pandas renames '' to 'Unnamed: k')."""
    return [c.strip() for c in next((rec for _, rec in _records(csv_path)), [])]


def _long_rows(csv_path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(header field count, [(line, field count)] of the rows that have more fields than the header)."""
    recs = _records(csv_path)
    n = len(next(recs, (0, []))[1])
    return n, [(line, len(rec)) for line, rec in recs if len(rec) > n]


def _refuse_long_rows(path: Path) -> None:
    n, long_rows = _long_rows(path)
    if long_rows:
        line, k = long_rows[0]
        more = f" (and {len(long_rows) - 1} more row(s): {rows_text(ln for ln, _ in long_rows[1:])})" if len(
            long_rows) > 1 else ""
        raise UserError(f"{path}: line {line} has {k} fields but the header has {n}{more}; an unquoted comma in a "
                        f"name, or a trailing comma? Quote the field or remove the extra comma")


def _refuse_not_utf8(path: Path) -> None:
    """One line naming the file line of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8 "
                        f"(e.g. Excel's 'CSV UTF-8')") from None


def read_csv_text(path: str | Path, what: str = "CSV") -> pd.DataFrame:
    """Read a CSV with every cell as text (blank = ''): we decide what is numeric, and image names keep their exact
    spelling. A UTF-8 byte-order mark and CRLF line ends are accepted. UserError if the file is missing, empty, not
    UTF-8, or has a row with more fields than the header (pandas would fail, or silently take the first column as
    the index when every row has one more)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the CSV is empty") from None
    except UnicodeDecodeError:
        _refuse_not_utf8(path)
        raise UserError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except pd.errors.ParserError as e:
        _refuse_long_rows(path)
        raise UserError(f"{path}: not a readable CSV ({first_line(e)})") from None
    if not isinstance(df.index, pd.RangeIndex):  # more fields than header names on every row
        _refuse_long_rows(path)
    return df


def _is_row_index(col: pd.Series) -> bool:
    return col.str.strip().tolist() == [str(i) for i in range(len(col))]


def check_header(path: Path, df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Refuse unnamed and repeated column names; drop a leading unnamed 0..N-1 column (the index pandas' `to_csv`
    writes). Returns the frame with stripped column names and (column, why) of what was dropped."""
    header = header_fields(path)
    if len(header) != len(df.columns):  # cannot happen after read_csv_text's checks; keep pandas' names
        header = [str(c).strip() for c in df.columns]
    notes = []
    if header and header[0] == "" and len(header) > 1 and _is_row_index(df.iloc[:, 0]):
        notes.append(("column 1 (no name)", "holds 0..N-1, the row index pandas' to_csv writes: dropped"))
        df, header = df.iloc[:, 1:], header[1:]
        first = 2
    else:
        first = 1
    for k, name in enumerate(header):
        if name == "":
            near = ", ".join(f"{w} {header[j]!r}" for w, j in (("after", k - 1), ("before", k + 1))
                             if 0 <= j < len(header) and header[j])
            raise UserError(f"{path}: column {k + first} of the header has no name{f' ({near})' if near else ''}; "
                            f"name it or remove the column")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:  # pandas would silently rename the second 'A' to 'A.1'
        raise UserError(f"{path}: the header names column(s) {', '.join(map(repr, dup))} more than once")
    df = df.copy()
    df.columns = header
    return df, notes
