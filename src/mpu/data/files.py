"""One reader for every data file the project takes: forget and retain sets (client, baseline,
``mpu run``), benchmark splits (finetune, eval) and local copies of TOFU, MUSE and WMDP.

A *data file* is one of:

- ``.jsonl`` / ``.json``: JSON lines (one object per line) or one JSON array of objects. A JSON
  array (or JSON lines) of plain strings is read as text rows ``{"text": ...}``, as MUSE ships its
  raw corpora and privleak sets.
- ``.csv``: a header row with the column names, then one row per record (read as strings, so that
  an answer such as ``1472`` stays the text the file holds).
- ``.parquet`` / ``.arrow``: read with the ``datasets`` library.
- ``.txt``: raw text (MUSE's raw corpora); one text row per block of lines separated by a blank
  line, so that no row is longer than the file's own paragraphs.
- a folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` folder needs a split);
- a folder in the hub layout holding one split: ``train-*.parquet`` / ``data/train-*.parquet``
  shards, or a single data file.

Every problem is an :class:`~mpu.errors.InputError` naming the file and the line (JSON lines, JSON
arrays, CSV, text) or the row (parquet, arrow, ``datasets`` folders); an empty file is refused.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from mpu.errors import InputError

Row = dict[str, Any]


class TextRow(dict):
    """A row read from a plain string (``{"text": ...}``), so that a QA reader can say "got a string"."""

# (where, row): where is "line N" for text formats and "row N" for columnar ones.
Numbered = list[tuple[str, Row]]

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv", ".txt")
SPLIT_FOLDER_MARKERS = ("dataset_info.json", "state.json")


def read_rows(path: str | Path, split: str | None = None) -> list[Row]:
    """The rows of a data file or folder (see the module docstring for the formats).

    ``split`` chooses a split of a ``DatasetDict`` folder or of a hub-layout folder (default: the
    only one, or ``train``). Raises :class:`InputError` (file and line) on anything malformed.
    """
    return [row for _, row in read_numbered(path, split)]


def read_numbered(path: str | Path, split: str | None = None) -> Numbered:
    """Like :func:`read_rows`, with each row's location ("line 3", "row 3") for error messages."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, split)
    if not path.is_file():
        raise InputError(path, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InputError(path, f"unknown data file type {suffix or '(no suffix)'!r}; "
                               f"expected one of {', '.join(DATA_SUFFIXES)} or a `datasets` folder")
    if path.stat().st_size == 0:
        raise InputError(path, "is empty (0 bytes)")
    if suffix in (".parquet", ".arrow"):
        rows = _read_columnar(path, suffix)
    else:
        text = _read_text(path)
        if not text.strip():
            raise InputError(path, "holds only whitespace, no rows")
        if suffix == ".csv":
            rows = _read_csv(path, text)
        elif suffix == ".txt":
            rows = _read_txt(text)
        elif text.lstrip().startswith("["):
            rows = _read_json_array(path, text)
        else:
            rows = _read_json_lines(path, text)
    if not rows:
        raise InputError(path, "contains no rows")
    return rows


def validate_fields(path: str | Path, numbered: Numbered, required: Sequence[str]) -> None:
    """Every row has every ``required`` field as a non-empty string; else InputError(path, line)."""
    for where, row in numbered:
        if isinstance(row, TextRow) and "text" not in required:
            raise InputError(path, f"{where}: expected a JSON object with {', '.join(map(repr, required))}, got a string")
        for name in required:
            if name not in row:
                raise InputError(path, f"{where}: missing field {name!r} (has {', '.join(map(repr, row)) or 'none'})")
            value = row[name]
            if not isinstance(value, str):
                raise InputError(path, f"{where}: field {name!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise InputError(path, f"{where}: field {name!r} is empty")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(path, f"line {line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    return text


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _as_row(path: Path, where: str, value: Any) -> Row:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):  # MUSE's raw corpora and privleak sets: arrays of plain strings
        return TextRow(text=value)
    raise InputError(path, f"{where}: expected a JSON object or a string, got {type(value).__name__}")


def _read_json_lines(path: Path, text: str) -> Numbered:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            hint = " (a pretty-printed JSON object? give JSON lines or a JSON array)" if number == 1 and line.strip() == "{" else ""
            raise InputError(path, f"line {number}: not valid JSON ({err.msg}){hint}") from None
        rows.append((f"line {number}", _as_row(path, f"line {number}", value)))
    return rows


def _read_json_array(path: Path, text: str) -> Numbered:
    """A JSON array, element by element, so that each row knows the line it starts on."""
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    rows: Numbered = []

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    index = skip(index)
    if index < len(text) and text[index] == "]":
        return rows
    while True:
        index = skip(index)
        where = f"line {_line_of(text, index)}"
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as err:
            raise InputError(path, f"line {err.lineno}: not valid JSON ({err.msg})") from None
        rows.append((where, _as_row(path, where, value)))
        index = skip(index)
        if index < len(text) and text[index] == ",":
            index += 1
            continue
        if index < len(text) and text[index] == "]":
            rest = skip(index + 1)
            if rest != len(text):
                raise InputError(path, f"line {_line_of(text, rest)}: unexpected text after the JSON array")
            return rows
        raise InputError(path, f"line {_line_of(text, min(index, len(text)))}: expected ',' or ']' in the JSON array")


def _read_csv(path: Path, text: str) -> Numbered:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as err:
        raise InputError(path, f"line 1: no CSV header ({err})") from None
    header = [name.strip() for name in header]
    separator = next((sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]), None)
    if separator is not None:   # a spreadsheet's export in a ';' locale, or a TSV named .csv
        raise InputError(path, f"line 1: the header {header[0]!r} is one column with {separator!r} inside: the file seems "
                               f"separated by {separator!r}, but CSV fields are read as separated by ','; save it with ',' "
                               f"between fields (pandas: pd.read_csv(path, sep={separator!r}).to_csv(path, index=False)) or as JSON lines")
    if not any(header) or len(set(header)) != len(header):
        raise InputError(path, f"line 1: the CSV header needs distinct column names, got {header}")
    rows: Numbered = []
    start = reader.line_num + 1
    try:
        for record in reader:
            where = f"line {start}"
            start = reader.line_num + 1
            if not record or not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise InputError(path, f"{where}: {len(record)} fields, the header has {len(header)}")
            rows.append((where, dict(zip(header, record))))
    except csv.Error as err:
        raise InputError(path, f"line {reader.line_num}: not valid CSV ({err})") from None
    return rows


def _read_txt(text: str) -> Numbered:
    rows: Numbered = []
    block: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                first = number
            block.append(line)
        elif block:
            rows.append((f"line {first}", {"text": "\n".join(block)}))
            block = []
    if block:
        rows.append((f"line {first}", {"text": "\n".join(block)}))
    return rows


def _read_columnar(path: Path, suffix: str) -> Numbered:
    import datasets

    builder = "parquet" if suffix == ".parquet" else "arrow"
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets/pyarrow raise many types for a damaged file
        raise InputError(path, f"unreadable {builder} file ({err.__class__.__name__}: {err})") from None
    return [(f"row {number}", dict(row)) for number, row in enumerate(dataset, start=1)]


def _read_folder(path: Path, split: str | None) -> Numbered:
    import datasets

    if (path / "dataset_dict.json").is_file() or any((path / marker).is_file() for marker in SPLIT_FOLDER_MARKERS):
        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a bad folder
            raise InputError(path, f"not a readable `datasets` folder ({err.__class__.__name__}: {err})") from None
        if isinstance(dataset, datasets.DatasetDict):
            names = list(dataset)
            chosen = split or (names[0] if len(names) == 1 else "train")
            if chosen not in dataset:
                raise InputError(path, f"holds the splits {', '.join(names)}; point at one split's folder")
            dataset = dataset[chosen]
        rows = [(f"row {number}", dict(row)) for number, row in enumerate(dataset, start=1)]
        if not rows:
            raise InputError(path, "contains no rows")
        return rows
    # The hub layout of one split: shards or a single data file, at the top or under data/.
    name = split or "train"
    for folder in (path, path / "data"):
        if not folder.is_dir():
            continue
        shards = sorted(folder.glob(f"{name}-*.parquet"))
        if shards:
            return [(f"{shard.name} {where}", row) for shard in shards for where, row in read_numbered(shard)]
        for suffix in DATA_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return read_numbered(folder / f"{name}{suffix}")
        files = [item for item in sorted(folder.iterdir()) if item.is_file() and item.suffix.lower() in DATA_SUFFIXES]
        if len(files) == 1:
            return read_numbered(files[0])
        if files and all(item.suffix.lower() == ".parquet" and item.stem.isdigit() for item in files):
            # the hub's parquet conversion (refs/convert/parquet): <split>/0000.parquet, 0001.parquet, ...
            return [(f"{item.name} {where}", row) for item in files for where, row in read_numbered(item)]
    raise InputError(path, f"a folder that is neither a `datasets` folder (save_to_disk) nor a hub-layout split "
                           f"(found no {name}-*.parquet or single data file)")
