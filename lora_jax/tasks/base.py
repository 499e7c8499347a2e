"""The Task interface shared by E2E, WikiSQL and SAMSum, and loading rows through `datasets`.

A task turns dataset rows into `Example`s (source text, target text), groups eval examples
into `EvalItem`s (one per distinct source, with all its references) and scores one
hypothesis per item: `score` gives the table's metrics, `item_scores` their per-item parts
(stored in the run's items file for the paired bootstrap). Rows come from the hub (`dataset="owner/name"`) or from local files
(`data_files={"train": path, "eval": path}` or `data_dir` + file names): CSV, JSON, JSONL
and parquet all go through `datasets.load_dataset`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from lora_jax.errors import ConfigError, DataError, MissingFile

if TYPE_CHECKING:
    import numpy as np

_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Example:
    """One training/eval pair. key: groups examples with the same source (E2E: the MR)."""

    source: str
    target: str
    key: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalItem:
    """One thing to decode and score: a distinct source with all of its references."""

    source: str
    references: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str
    main_metric: str
    instruction: str  # prepended to the source in the chat format
    item_metrics: ClassVar[tuple[str, ...]]  # the metrics item_scores gives per item
    # The corpus metrics of score() that per-item sufficient statistics decompose: name ->
    # the metric (as score() reports it) of statistics summed over items, [..., K] -> [...].
    corpus_metrics: ClassVar[Mapping[str, Callable[[np.ndarray], np.ndarray]]]

    def load(self, split: str) -> list[Example]: ...  # split: "train" | "validation" | "eval"

    def eval_groups(self, examples: list[Example]) -> list[EvalItem]: ...

    def score(self, hyps: list[str], items: list[EvalItem]) -> dict[str, Any]: ...

    def item_scores(
        self, hyps: list[str], items: list[EvalItem], metrics: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Per item, the metrics of score() that decompose over items (for the paired
        bootstrap, lora_jax.report.compare): a number for a mean-of-items metric (score()
        reports the mean over items) or a list of sufficient statistics for a metric in
        ``corpus_metrics`` (score() reports ``corpus_metrics[name]`` of their sum over items).
        ``metrics``: compute only these (None: all)."""
        ...

    def prompt(self, source: str) -> str: ...

    def postprocess(self, generated: str) -> str: ...


SPLITS = ("train", "validation", "eval")  # "eval" is the test split the run reports


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def group_by_key(examples: list[Example]) -> list[EvalItem]:
    """One EvalItem per distinct key, in order of first appearance, references in file order."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.key, []).append(ex)
    return [
        EvalItem(g[0].source, tuple(e.target for e in g), dict(g[0].extra)) for g in groups.values()
    ]


def resolve_files(
    split: str, data_files: dict[str, Any] | None, data_dir: str | None, file_names: dict[str, str]
) -> list[str] | None:
    """Local files for `split` ("train"/"validation"/"eval"), or None when the hub should be
    used."""
    files: Any = None
    if data_files:  # None or {}: not given
        if split not in data_files:
            raise ConfigError(
                f"data_files has no entry for split {split!r}: got keys {sorted(data_files)}"
            )
        files = data_files[split]
    elif data_dir is not None:
        files = str(Path(data_dir) / file_names[split])
    if files is None:
        return None
    files = [str(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    for f in files:
        if not Path(f).is_file():
            raise MissingFile(f"{split} data file not found: {f}")
        if Path(f).suffix.lower() not in _BUILDERS:
            raise ConfigError(f"{f}: unsupported file type; use one of {sorted(_BUILDERS)}")
    return files


def load_rows(
    files: list[str] | None,
    dataset: str | None,
    hub_split: str,
    config_name: str | None = None,
    revision: str | None = None,
) -> list[dict[str, Any]]:
    """Rows as dicts from local files (through `datasets`' csv/json/parquet builders) or the hub."""
    import datasets

    if files is not None:
        for f in files:
            check_text_file(Path(f))
        builder = _BUILDERS[Path(files[0]).suffix.lower()]
        kwargs: dict[str, Any] = {}
        if builder == "csv":  # keep "NA", "None", ... as text, never NaN
            kwargs = {"keep_default_na": False, "na_filter": False}
        try:
            ds = datasets.load_dataset(builder, data_files={"data": files}, split="data", **kwargs)
        except Exception as e:  # the library's message, with the file named and the fix
            cause = e.__cause__ or e
            raise DataError(
                f"{', '.join(files)}: could not be read as {builder}: {type(cause).__name__}: "
                f"{cause}. Check that the file is valid {builder} with the task's columns"
            ) from e
    else:
        if not dataset:
            raise ConfigError("no data: set `dataset` (a hub id) or `data_dir` / `data_files`")
        try:
            ds = datasets.load_dataset(dataset, config_name, split=hub_split, revision=revision)
        except Exception as e:
            if "script" not in str(e).lower():
                raise
            raise ConfigError(
                f"{dataset} is a dataset loading script, which this `datasets` "
                f"({datasets.__version__}) does not run: set task.revision=refs/convert/parquet "
                "(the hub's parquet conversion), or task.dataset=<a parquet copy>, or "
                "task.data_dir=<local files>"
            ) from None
    return [dict(r) for r in ds]


def check_text_file(path: Path) -> None:
    """Readable errors for the usual broken inputs, before the dataset library sees them:
    an empty file, non-UTF-8 bytes (line and column named), a CSV with a header but no
    rows, a JSON Lines row that does not parse (line named)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        return
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(
            f"{path}: the file is empty; it needs a header/records with the task's columns"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}, column {col}: not UTF-8 (byte 0x{raw[e.start]:02x}); re-save the "
            "file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`"
        ) from e
    lines = text.splitlines()
    if suffix == ".csv":
        if sum(1 for ln in lines[1:] if ln.strip()) == 0:
            raise DataError(f"{path}: only a header line ({lines[0][:80]!r}) and no data rows")
        return
    if suffix == ".json":
        try:
            json.loads(text)
            return  # one JSON document
        except ValueError:
            pass  # JSON Lines in a .json file: check line by line
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            json.loads(ln)
        except ValueError as e:
            raise DataError(
                f"{path}, line {i}: not valid JSON ({e}); each line of a JSON Lines file must be "
                "one complete JSON object: fix or remove that line"
            ) from e


def require_columns(
    rows: list[dict], needed: dict[str, tuple[str, ...]], origin: str
) -> dict[str, str]:
    """Map each logical column to the first alias present; clear error naming what exists."""
    present = set(rows[0]) if rows else set()
    if not rows:
        raise DataError(f"{origin}: no rows")
    found = {}
    for logical, aliases in needed.items():
        hit = next((a for a in aliases if a in present), None)
        if hit is None:
            raise DataError(
                f"{origin}: expected a column named one of {list(aliases)} for {logical}; "
                f"found columns {sorted(present)}"
            )
        found[logical] = hit
    return found


@dataclass
class RowSource:
    """Where a task's rows come from: a hub dataset (``dataset``, ``train_split`` /
    ``eval_split``, ``revision``) or local files (``data_files`` or ``data_dir`` + file names).
    Tasks subclass it with their own defaults."""

    dataset: str | None = None
    data_dir: str | None = None
    data_files: dict[str, Any] | None = None
    train_file: str = "train.jsonl"
    eval_file: str = "validation.jsonl"
    train_split: str = "train"
    eval_split: str = "validation"
    revision: str | None = None
    # the split used for validation (model selection), when it is distinct from both the
    # training data and the eval (test) split: see validation_origin
    validation_file: str | None = None
    validation_split: str | None = None

    def rows(
        self, split: str, columns: dict[str, tuple[str, ...]]
    ) -> tuple[list[dict], dict[str, str], str]:
        """(rows, column name per role, origin for error messages) of ``split``."""
        check_split(split)
        names = {"train": self.train_file, "eval": self.eval_file,
                 "validation": self.validation_file or ""}  # fmt: skip
        files = resolve_files(split, self.data_files, self.data_dir, names)
        hub_split = {"train": self.train_split, "eval": self.eval_split,
                     "validation": self.validation_split or ""}[split]  # fmt: skip
        origin = files[0] if files else f"{self.dataset}[{hub_split}]"
        rows = load_rows(files, self.dataset, hub_split, revision=self.revision)
        return rows, require_columns(rows, columns, origin), origin

    def origin(self, split: str) -> str | None:
        """Where ``split`` comes from (a resolved file path or ``dataset[split]``), without
        reading it; None when the task has no such source."""
        if self.data_files:
            f = self.data_files.get(split)
            return None if f is None else str(Path(f[0] if isinstance(f, list) else f).resolve())
        name = {"train": self.train_file, "eval": self.eval_file,
                "validation": self.validation_file}[split]  # fmt: skip
        if self.data_dir is not None:
            p = Path(self.data_dir) / name if name else None
            return str(p.resolve()) if p is not None and p.is_file() else None
        hub = {"train": self.train_split, "eval": self.eval_split,
               "validation": self.validation_split}[split]  # fmt: skip
        return f"{self.dataset}[{hub}]" if self.dataset and hub else None

    def validation_origin(self) -> str | None:
        """The validation split's source when the task has one that is neither the training
        data nor the eval (test) split, else None (then a run holds out part of the training
        data: lora_jax.train.data.split_validation). E.g. E2E: the official dev set, except
        offline where the dev set is the training file; WikiSQL: none (its eval split is the
        validation split, as in the LoRA paper); SAMSum: its validation split."""
        v = self.origin("validation")
        return v if v is not None and v not in (self.origin("train"), self.origin("eval")) else None
