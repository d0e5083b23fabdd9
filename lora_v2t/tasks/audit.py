"""Leakage audit: what a store of sentence vectors gives away when they are inverted.

Three stages, each resumable, in the audit's folder DIR:

1. extract: the source (see :mod:`lora_v2t.tasks.sources`) is read once, all rows or a seeded sample, into
   ``vectors.npy``, ``ids.jsonl`` and, with originals, ``originals.txt`` (one per row, ``\\n`` escaped; ``\\N`` for a
   row the store keeps no original for, e.g. a NULL text column: it is left out of the measures against originals);
   written in a temporary folder and moved in at the end, with ``audit.json`` (the options and the source's
   fingerprint: a rerun with others is refused).
2. invert: the bulk inversion of :mod:`lora_v2t.tasks.invert` on ``vectors.npy`` into ``inverted.jsonl``, with
   cosines; stopped and rerun, it continues after its last complete row. Under ``accelerate launch`` each process
   inverts its own rows into its own part (:mod:`lora_v2t.tasks.shards`).
3. measure: ``rows.jsonl`` (per row), ``summary.json`` (the figures, with 95% bootstrap intervals) and
   ``report.html``. Cosine, exact match and chrF are computed as ``evaluate`` computes them.

``timings.json`` records the seconds spent reading the source and inverting (kept out of ``summary.json``, which
an interrupted audit rerun gives back identical).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..util.errors import V2TError
from ..util.locks import held
from . import leaks
from .invert import NAN_POLICIES, InvertJob, output_lock, prepare_job, run_job
from .report import write_report
from .shards import Shard, bounds, current_shard, part_files, parts, write_part
from .sources import open_source
from .vectorsource import SourceOptions, VectorSource

IDENTITY, VECTORS, IDS, ORIGINALS = "audit.json", "vectors.npy", "ids.jsonl", "originals.txt"
NO_ORIGINAL = "\\N"  # the line of originals.txt for a row without one (escape_line doubles every backslash)
INVERTED, ROWS, SUMMARY, REPORT, TIMINGS = "inverted.jsonl", "rows.jsonl", "summary.json", "report.html", "timings.json"
LOCK, EXTRACTING = "audit.lock", ".extract.tmp"
READ_CHUNK = 1024

if TYPE_CHECKING:
    from ..bundle.format import BundleConfig
    from ..model.vector2text import Vector2Text


@dataclass
class AuditJob:
    """What to audit, where, and how."""

    source: str  # FILE.npy, FILE.faiss, chroma:DIR:COLLECTION or postgresql://...
    out: str  # the audit's folder
    originals: str | None = None  # a text file, one original per row of the source (else a store's documents)
    sample: int | None = None  # audit a seeded sample of this many rows (None: every row)
    seed: int = 0  # the sample's seed
    source_options: SourceOptions = field(default_factory=SourceOptions)
    on_nan: str = "refuse"  # rows with NaN or inf: refuse (naming them) or skip (counted)
    batch_size: int | None = None  # vectors decoded together; None: chosen from the free memory
    options: dict = field(default_factory=dict)  # decoding options over the adapter's defaults
    dtype: str | None = None  # what the base computes in; None: as loaded
    adapter_label: str | None = None  # how audit.json names the adapter (default: its folder's absolute path)
    budget: int | None = None  # decodes per vector (see lora_v2t.model.beam); None or 1: greedy
    resamples: int = 1000  # bootstrap resamples, drawn with seed 0 as `evaluate` draws them
    top: int = 20  # rows shown side by side in the report

    def __post_init__(self):
        if self.sample is not None and (isinstance(self.sample, bool) or self.sample < 1):
            raise V2TError(f"--sample must be >= 1 (rows to audit), got {self.sample}")
        if not 0 <= self.seed < 2**63:
            raise V2TError(f"--seed must be from 0 to 2**63 - 1, got {self.seed}")
        if self.on_nan not in NAN_POLICIES:
            raise V2TError(f"--on-nan must be one of {list(NAN_POLICIES)}, got {self.on_nan!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise V2TError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.resamples < 1:
            raise V2TError(f"resamples must be >= 1, got {self.resamples}")


@dataclass
class Plan:
    """An audit checked before anything is written: its source, the rows to read, the originals, its identity."""

    job: AuditJob
    folder: Path
    source: VectorSource
    indices: np.ndarray
    originals: list[str] | None
    identity: dict


def sample_indices(rows: int, sample: int | None, seed: int) -> np.ndarray:
    """Every row, or ``sample`` rows drawn without replacement by numpy's default_rng(seed), ascending."""
    if sample is None:
        return np.arange(rows, dtype=np.int64)
    if sample > rows:
        raise V2TError(
            f"--sample {sample} is larger than the source ({rows} rows): give --sample {rows} or less, "
            "or leave --sample out to audit every row"
        )
    return np.sort(np.random.default_rng(seed).choice(rows, size=sample, replace=False)).astype(np.int64)


def read_originals(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, one original per row (line i + 1 for row i; a blank line is an empty
    original)."""
    path = Path(path)
    if not path.is_file():
        raise V2TError(
            f"--originals {path} {'is a folder' if path.is_dir() else 'does not exist'}: give a text "
            "file with one original sentence per row of the source"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise V2TError(
            f"--originals {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): convert it to UTF-8"
        ) from exc
    except OSError as exc:
        raise V2TError(f"cannot read --originals {path}: {exc.strerror or exc}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def escape_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def unescape_line(line: str) -> str:
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            out.append({"n": "\n", "r": "\r"}.get(line[i + 1], line[i + 1]))
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def plan_audit(job: AuditJob, config: BundleConfig, adapter_dir: str | Path) -> Plan:
    """Open and check the source, the sample, the originals and DIR, writing nothing."""
    from ..config import GenerationConfig

    GenerationConfig.of_bundle(config, **job.options)  # bad decoding options fail before anything is read
    if job.budget is not None:  # so does a bad budget
        from ..model.beam import plan_budget

        plan_budget(job.budget, has_corrector=bool(config.corrector))
    source = open_source(job.source, job.source_options)
    dim, encoder = config.encoder.dim, config.encoder.spec
    if source.dim != dim:
        raise V2TError(
            f"{source.describe()} holds {source.dim}-d vectors, but the adapter's encoder {encoder} "
            f"makes {dim}-d vectors: audit them with an adapter trained on the encoder that made them"
        )
    indices = sample_indices(len(source), job.sample, job.seed)
    originals, named = None, None
    if job.originals is not None:
        originals = read_originals(job.originals)
        if len(originals) != len(source):
            raise V2TError(
                f"--originals {job.originals} has {len(originals)} lines but {source.describe()} holds "
                f"{len(source)} rows: give one original per row of the source, in its order"
            )
        named = {
            "file": str(Path(job.originals).resolve()),
            "sha256": hashlib.sha256(Path(job.originals).read_bytes()).hexdigest()[:16],
        }
    identity = {
        "format": 1,
        "source": source.describe(),
        "source_fingerprint": source.fingerprint(),
        "rows_in_source": len(source),
        "sample": job.sample,
        "seed": job.seed if job.sample else None,
        "originals": named,
        "on_nan": job.on_nan,
        "adapter": job.adapter_label or str(Path(adapter_dir).resolve()),
        "decoding": job.options | ({"budget": job.budget} if (job.budget or 1) > 1 else {}),
        "dtype": job.dtype,
    }
    folder = Path(job.out)
    check_folder(folder, identity)
    return Plan(job, folder, source, indices, originals, identity)


def check_folder(folder: Path, identity: dict) -> None:
    """Refuse an audit folder that is a file, holds other files than an audit's, or another audit's."""
    if folder.exists() and not folder.is_dir():
        raise V2TError(f"--out {folder} is a file: give a new folder (or an audit's, to continue it)")
    if not folder.is_dir() or not set(os.listdir(folder)) - {LOCK, EXTRACTING}:
        return
    if not (folder / IDENTITY).is_file():
        raise V2TError(f"--out {folder} holds other files than an audit's (no {IDENTITY}): give a new or empty folder")
    try:
        saved = json.loads((folder / IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise V2TError(f"{folder / IDENTITY} is unreadable ({exc}): delete {folder} to start the audit over") from exc
    for key, value in identity.items():
        if saved.get(key) != value:
            raise V2TError(
                f"--out {folder} holds an audit with another {key} ({saved.get(key)!r}, now {value!r}): "
                "rerun it with the same options to continue it, or give another --out"
            )


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def extract(plan: Plan, show_progress: bool = True) -> float | None:
    """Read the rows into DIR (stage 1); returns the seconds spent reading, or None when DIR holds them already.
    Rows with NaN or inf are refused here, naming their ids, unless the job skips them."""
    from tqdm.auto import tqdm

    folder = plan.folder
    if (folder / VECTORS).is_file():
        return None
    tmp = folder / EXTRACTING
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, started = len(plan.indices), time.perf_counter()
    vectors = np.lib.format.open_memmap(tmp / VECTORS, mode="w+", dtype=np.float32, shape=(n, plan.source.dim))
    ids: list = []
    texts: list[str | None] | None = [] if plan.originals is not None else None
    bar = tqdm(total=n, unit="row", desc="reading", disable=not show_progress)
    for begin in range(0, n, READ_CHUNK):
        chunk = plan.indices[begin : begin + READ_CHUNK]
        batch = plan.source.read(chunk)
        bad = ~np.isfinite(batch.vectors).all(axis=1)
        if bad.any() and plan.job.on_nan == "refuse":
            named = [batch.ids[i] for i in np.flatnonzero(bad)[:5]]
            raise V2TError(
                f"{plan.source.describe()}: row(s) with id {named} hold NaN or inf: fix them, or pass "
                "--on-nan skip to skip such rows (they are counted)"
            )
        vectors[begin : begin + len(chunk)] = batch.vectors
        ids += batch.ids
        new: list[str | None] | None
        if plan.originals is not None:
            new = [plan.originals[i] for i in chunk]
        else:  # the store's documents, where it has them
            new = None if batch.texts is None else [None if t is None else str(t) for t in batch.texts]
        if new is not None:
            texts = [] if texts is None else texts
            texts += new
        bar.update(len(chunk))
    bar.close()
    vectors.flush()
    del vectors
    seconds = time.perf_counter() - started
    (tmp / IDS).write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ids), encoding="utf-8")
    if texts is not None:
        lines = (NO_ORIGINAL if t is None else escape_line(t) for t in texts)
        (tmp / ORIGINALS).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    _replace_text(folder / IDENTITY, json.dumps(plan.identity, ensure_ascii=False, indent=1) + "\n")
    _replace_text(folder / TIMINGS, json.dumps({"read_seconds": round(seconds, 3), "rows_read": n}) + "\n")
    for name in (IDS, ORIGINALS, VECTORS):  # vectors.npy last: it says the stage is done
        if (tmp / name).exists():
            os.replace(tmp / name, folder / name)
    tmp.rmdir()
    return seconds


def invert_rows(
    load, plan: Plan, adapter_dir: str | Path, config: BundleConfig, shard: Shard, show_progress: bool = True
) -> dict:
    """Stage 2: the bulk inversion of DIR/vectors.npy into DIR/inverted.jsonl (with several processes, of this
    process's rows into its part), with cosines; ``load()`` gives the loaded adapter, called only when rows are
    left to invert."""
    job = plan.job
    vectors, inverted = part_files(plan.folder, VECTORS, INVERTED, shard.rank, shard.world)
    if shard.world > 1:
        start, stop = bounds(len(plan.indices), shard.world)[shard.rank]
        if start == stop:  # more processes than rows: nothing for this one
            return {"written": 0, "skipped": 0, "resumed_at": 0, "seconds": 0.0}
        write_part(plan.folder / VECTORS, vectors, start, stop)
    invert_job = InvertJob(
        source=str(vectors),
        out=str(inverted),
        cosine=True,
        on_nan=job.on_nan,
        batch_size=job.batch_size,
        options=job.options,
        dtype=job.dtype,
        budget=job.budget,
    )
    with output_lock(invert_job.out):
        prepared = prepare_job(invert_job, adapter_dir, plan.identity["adapter"], config)
        if prepared.start >= len(prepared.source):
            return {"written": 0, "skipped": 0, "resumed_at": prepared.start, "seconds": 0.0}
        v2t = load()
        loaded = v2t.backbone_info["compute_dtype"]
        if job.dtype not in (None, loaded):
            raise V2TError(
                f"the audit asks for dtype {job.dtype} but the base was loaded in {loaded}: load it with "
                f"load_adapter(..., dtype={job.dtype!r})"
            )
        started = time.perf_counter()
        counts = run_job(v2t, invert_job, prepared, show_progress)
    return counts | {"seconds": time.perf_counter() - started}


def read_rows(folder: Path, world: int = 1) -> tuple[list[dict], list[str | None] | None]:
    """The inverted rows of every part (index, id, reconstruction, cosine), in row order, and the originals of
    all extracted rows (or None; None for a row without one)."""
    ids = [json.loads(line) for line in (folder / IDS).read_text(encoding="utf-8").splitlines()]
    originals: list[str | None] | None = None
    if (folder / ORIGINALS).is_file():
        lines = (folder / ORIGINALS).read_text(encoding="utf-8").split("\n")
        originals = [None if line == NO_ORIGINAL else unescape_line(line) for line in lines]
        originals = originals[: len(ids)]
    rows = []
    for path, offset in parts(folder, VECTORS, INVERTED, len(ids), world):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            index = offset + row["index"]
            rows.append({"id": ids[index], "reconstruction": row["text"], "cosine": row["cosine"], "index": index})
    return rows, originals


def write_results(folder: Path, records: list[dict], summary: dict, top: int) -> None:
    """rows.jsonl, report.html, then summary.json, each written whole and renamed into place."""
    _replace_text(folder / ROWS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_report(folder / REPORT, summary, records, top)
    _replace_text(folder / SUMMARY, json.dumps(summary, ensure_ascii=False, indent=1) + "\n")


def audit(v2t: Vector2Text, job: AuditJob, adapter_dir: str | Path, show_progress: bool = True) -> dict:
    """Audit ``job.source`` with ``v2t`` (loaded from ``adapter_dir``): extract, invert, measure; returns the
    summary, with ``report`` (the report's path) and ``timings`` added."""
    loaded = v2t.backbone_info["compute_dtype"]
    if job.dtype not in (None, loaded):
        raise V2TError(
            f"the job asks for dtype {job.dtype} but the base was loaded in {loaded}: load it with "
            f"load_adapter(..., dtype={job.dtype!r})"
        )
    return run_audit(lambda: v2t, replace(job, dtype=loaded), adapter_dir, show_progress=show_progress)


def run_audit(
    load, job: AuditJob, adapter_dir: str | Path, config: BundleConfig | None = None, show_progress: bool = True
) -> dict:
    """:func:`audit` with ``load()`` giving the adapter, called only when rows are left to invert (a rerun of a
    finished audit loads nothing). Under ``accelerate launch`` every process inverts its part (see
    :mod:`lora_v2t.tasks.shards`); the main process extracts, reports and returns the summary, the others ``{}``."""
    from ..bundle.adapter import validate_bundle
    from ..model.correct import check_role

    config = config or validate_bundle(adapter_dir)
    check_role(config, "hypothesizer", str(adapter_dir))
    shard = current_shard()
    plan = plan_audit(job, config, adapter_dir)
    shard.wait()  # every process has checked the input before the main one writes
    created = not plan.folder.exists()
    try:
        with _folder_lock(plan.folder) if shard.main else nullcontext():
            if shard.main:
                try:
                    extract(plan, show_progress)
                finally:
                    shutil.rmtree(plan.folder / EXTRACTING, ignore_errors=True)
            shard.wait()
            counts = invert_rows(load, plan, adapter_dir, config, shard, show_progress and shard.main)
            shard.wait()
            return report(plan, counts["seconds"], shard.world, show_progress) if shard.main else {}
    finally:
        plan.source.close()
        if shard.main and created and plan.folder.is_dir() and not any(plan.folder.iterdir()):
            plan.folder.rmdir()  # refused before anything was written: leave no empty folder behind


def report(plan: Plan, invert_seconds: float, world: int = 1, show_progress: bool = True) -> dict:
    """Stage 3: measure every inverted row, write rows.jsonl, report.html and summary.json; returns the summary
    with ``report`` (its path) and ``timings``."""
    started = time.perf_counter()
    rows, originals = read_rows(plan.folder, world)
    if not rows:
        raise V2TError(f"every row of {plan.source.describe()} holds NaN or inf: nothing to audit")
    records = leaks.measure(rows, originals, show_progress)
    summary = leaks.summarise(records, plan.identity, len(plan.indices), plan.job.resamples)
    write_results(plan.folder, records, summary, plan.job.top)
    timings = _add_timings(plan.folder, invert_seconds, time.perf_counter() - started)
    return summary | {"report": str(plan.folder / REPORT), "timings": timings}


@contextmanager
def _folder_lock(folder: Path):
    """Hold DIR's lock (DIR created if missing) for the ``with`` block: a second audit on the same DIR is refused,
    naming the first."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise V2TError(
            f"cannot create --out {folder} ({exc.strerror or exc}): give a folder in a writable place"
        ) from exc
    with held(
        folder / LOCK,
        lambda holder: f"{folder} is being audited by {holder}: wait for it to end, or give another --out",
        lambda reason: f"cannot lock --out {folder} ({reason}): give a folder in a writable place",
    ):
        yield


def _add_timings(folder: Path, invert_seconds: float, measure_seconds: float) -> dict:
    """timings.json: the seconds spent reading the source, inverting (over every run) and measuring (last run)."""
    try:
        timings = json.loads((folder / TIMINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        timings = {}
    timings["invert_seconds"] = round(timings.get("invert_seconds", 0.0) + invert_seconds, 3)
    timings["measure_seconds"] = round(measure_seconds, 3)
    _replace_text(folder / TIMINGS, json.dumps(timings) + "\n")
    return timings
