"""The dataset catalog: named math data sets, normalised to one row shape.

Every loader returns rows with the columns of :data:`COLUMNS`:
``id`` (str), ``problem`` (str), ``answer`` (str, the gold final answer), ``source`` (catalog
name), ``solution`` (worked solution or ``""``), ``subject`` (``""`` when unknown) and
``level`` (int, ``0`` when unknown).

Each entry names its hub id and split (the source of truth, see ``../shared/data/README.md``).
With ``R1_DATA_DIR`` set, the loaders read the local mirror ``$R1_DATA_DIR/<folder>/<split>.jsonl``
instead, through ``datasets``' JSON loader; with it unset they call ``datasets.load_dataset`` on
the hub id.

Answer normalisation: GSM8K's answer is the text after ``####`` (thousands separators dropped);
AMC numbers such as ``27.0`` become ``27``; AIME strings are kept as they are (``025``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "R1_DATA_DIR"
COLUMNS = ("id", "problem", "answer", "source", "solution", "subject", "level")


class DataError(ValueError):
    """A data set that cannot be loaded (unknown name, missing mirror, bad split)."""


@dataclass(frozen=True)
class CatalogEntry:
    """One named data set.

    Attributes:
        hub_id: the upstream data set on the hub.
        hub_config: its configuration name (``None`` when it has none).
        splits: the splits that exist.
        folder: the folder of the local mirror (``$R1_DATA_DIR/<folder>/<split>.jsonl``).
        normalise: maps ``(raw_row, index, split)`` to a normalised row, or ``None`` when the row
            has no usable answer (skipped and counted).
    """

    hub_id: str
    hub_config: str | None
    splits: tuple[str, ...]
    folder: str
    normalise: Callable[[dict, int, str], dict | None]


def _row(id_, problem, answer, source, solution="", subject="", level=0) -> dict | None:
    problem = (problem or "").strip()
    answer = "" if answer is None else str(answer).strip()
    if not problem or not answer:
        return None
    return {
        "id": str(id_),
        "problem": problem,
        "answer": answer,
        "source": source,
        "solution": (solution or "").strip(),
        "subject": subject or "",
        "level": int(level or 0),
    }


_CALC_MARK = re.compile(r"<<[^>]*>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _gsm8k(raw: dict, i: int, split: str) -> dict | None:
    text = raw.get("answer") or ""
    if "####" not in text:
        return None
    steps, final = text.rsplit("####", 1)
    answer = _THOUSANDS.sub("", final.strip())
    return _row(f"gsm8k/{split}/{i}", raw.get("question"), answer, "gsm8k", _CALC_MARK.sub("", steps))


def _math500(raw: dict, i: int, split: str) -> dict | None:
    level = raw.get("level")
    return _row(
        raw.get("unique_id") or f"math500/{i}",
        raw.get("problem"),
        raw.get("answer"),
        "math500",
        raw.get("solution"),
        raw.get("subject"),
        level if isinstance(level, int) else int(str(level or 0).split()[-1] or 0),
    )


def _aime24(raw: dict, i: int, split: str) -> dict | None:
    return _row(f"aime24/{raw.get('id', i)}", raw.get("problem") or raw.get("question"),
                raw.get("answer"), "aime24", raw.get("solution"))


def _number_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text[:-2] if re.fullmatch(r"-?\d+\.0", text) else text


def _amc23(raw: dict, i: int, split: str) -> dict | None:
    return _row(f"amc23/{raw.get('id', i)}", raw.get("problem") or raw.get("question"),
                _number_text(raw.get("answer")), "amc23")


CATALOG: dict[str, CatalogEntry] = {
    "gsm8k": CatalogEntry("openai/gsm8k", "main", ("train", "test"), "gsm8k", _gsm8k),
    "math500": CatalogEntry("HuggingFaceH4/MATH-500", None, ("test",), "math500", _math500),
    "aime24": CatalogEntry("HuggingFaceH4/aime_2024", None, ("train",), "aime24", _aime24),
    "amc23": CatalogEntry("math-ai/amc23", None, ("test",), "amc23", _amc23),
}
#: The split used when a benchmark is named without one (the mirror's file name).
DEFAULT_SPLIT = {"gsm8k": "test", "math500": "test", "aime24": "test", "amc23": "test"}
#: The mirror's file for a split, where it differs from the hub split's name.
_MIRROR_FILE = {("aime24", "train"): "test"}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"name"`` or ``"name:split"`` into ``(name, split)``.

    Raises:
        DataError: unknown name or split; the message lists the known ones.
    """
    name, _, split = spec.partition(":")
    if name not in CATALOG:
        raise DataError(f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(CATALOG))}.")
    split = split or DEFAULT_SPLIT[name]
    entry = CATALOG[name]
    allowed = set(entry.splits) | {DEFAULT_SPLIT[name]}
    if split not in allowed:
        raise DataError(f"Dataset {name!r} has no split {split!r}; use one of {sorted(allowed)}.")
    return name, split


def data_dir() -> Path | None:
    """The local mirror folder from ``$R1_DATA_DIR``, or ``None`` to read from the hub."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def source_uri(spec: str) -> str:
    """Where a data set is read from: the mirror file path, or ``hf://<hub_id>@<split>``."""
    name, split = parse_spec(spec)
    mirror = data_dir()
    if mirror is not None:
        return str(_mirror_file(mirror, name, split))
    entry = CATALOG[name]
    return f"hf://datasets/{entry.hub_id}" + (f"/{entry.hub_config}" if entry.hub_config else "") + f"@{split}"


def _mirror_file(mirror: Path, name: str, split: str) -> Path:
    return mirror / CATALOG[name].folder / f"{_MIRROR_FILE.get((name, split), split)}.jsonl"


def check_available(spec: str) -> None:
    """Raise :class:`DataError` now (before any expensive work) if ``spec`` cannot be loaded."""
    name, split = parse_spec(spec)
    mirror = data_dir()
    if mirror is None:
        return
    if not mirror.is_dir():
        raise DataError(
            f"R1_DATA_DIR={mirror} does not exist. Point R1_DATA_DIR at a local mirror laid out like "
            "../shared/data (e.g. export R1_DATA_DIR=../shared/data), or unset it to read from the hub."
        )
    path = _mirror_file(mirror, name, split)
    if not path.is_file():
        raise DataError(f"{path} is missing from the local mirror R1_DATA_DIR={mirror}; "
                        f"add it, or unset R1_DATA_DIR to read {CATALOG[name].hub_id} from the hub.")


def load_raw(spec: str) -> datasets.Dataset:
    """The data set as stored upstream (not normalised)."""
    name, split = parse_spec(spec)
    check_available(spec)
    mirror = data_dir()
    entry = CATALOG[name]
    if mirror is not None:
        path = _mirror_file(mirror, name, split)
        try:
            return datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as err:  # datasets says only "An error occurred while generating the dataset"
            raise DataError(_first_bad_line(path) or f"{path}: cannot be read as JSON lines: {err}") from err
    return datasets.load_dataset(entry.hub_id, entry.hub_config, split=split)


def _first_bad_line(path: Path) -> str | None:
    """``"<path>:<line>: ..."`` for the first line of a JSON-lines file that is not a JSON object."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line), dict)
            except json.JSONDecodeError as err:
                return f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); fix or remove that line."
            if not ok:
                return f"{path}:{number}: not a JSON object; each line must be one record {{...}}."
    return None


def load(spec: str) -> tuple[datasets.Dataset, dict[str, int]]:
    """Load a catalog data set normalised to :data:`COLUMNS`.

    Args:
        spec: ``"name"`` or ``"name:split"`` (e.g. ``"gsm8k:train"``, ``"math500"``).

    Returns:
        ``(dataset, counts)`` where ``counts`` has ``rows_read`` and ``rows_skipped`` (rows with
        no problem or no answer).

    Raises:
        DataError: unknown name/split, or a missing local mirror file.
    """
    name, split = parse_spec(spec)
    raw = load_raw(spec)
    rows, skipped = [], 0
    for i, item in enumerate(raw):
        row = CATALOG[name].normalise(item, i, split)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    if skipped:
        logger.warning("%s: skipped %d rows with no problem or answer", spec, skipped)
    ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({c: [] for c in COLUMNS})
    return ds, {"rows_read": len(raw), "rows_skipped": skipped}
