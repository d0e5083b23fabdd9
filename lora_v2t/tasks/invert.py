"""Bulk inversion: vectors from a (memory-mapped) ``.npy`` file, or texts from a file, decoded batch by batch and
appended to a JSONL or TSV file as they come.

Each batch's rows are written in one write and flushed, so a stop (Ctrl-C, kill, a full disk) leaves only complete
rows; a row cut short by a crash is dropped when the job restarts, and the job continues after the last complete
row. ``OUT.meta.json`` names the adapter, the decoding options and the source the rows come from: a restart with
another adapter, other options or another source (or the same file with other content) is refused rather than
appended to. While a job writes OUT it holds ``OUT.lock``: a second job on the same OUT is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bundle.format import BundleConfig
from ..config import SEED_LIMIT
from ..tasks.invertsource import Source
from ..util.errors import V2TError
from ..util.files import append_complete, atomic_write
from ..util.locks import held
from ..util.textfile import escape_tsv, split_lines, unescape_tsv

if TYPE_CHECKING:
    from ..model.vector2text import Vector2Text

logger = logging.getLogger(__name__)

FORMATS = (".jsonl", ".tsv")
NAN_POLICIES = ("refuse", "skip")
ADVICE = "free some space there, or give an --out on another disk"


@dataclass
class InvertJob:
    """What to invert, where the rows go and how."""

    source: str  # a .npy file of (N, d) vectors, or a UTF-8 text file with one sentence per line
    out: str  # the .jsonl or .tsv file the rows are appended to
    cosine: bool = False  # also write the cosine between each row's vector and its text's re-embedding
    on_nan: str = "refuse"  # a vector with NaN or inf: refuse the job (naming the rows) or skip the row (counted)
    batch_size: int | None = None  # vectors decoded together; None = chosen from the free memory
    options: dict = field(default_factory=dict)  # decoding options (GenerationConfig fields) over the adapter's
    dtype: str | None = None  # what the base computes in ("float32", "bfloat16"...); None: as loaded (invert_file)
    seed: int | None = None  # seeds sampling (each batch from the seed and its first row); None: unseeded
    budget: int | None = None  # decodes per vector (see lora_v2t.model.beam); None or 1: greedy
    sources: str | tuple | None = None  # what the budget spends on (None: the rule chooses)
    corrector: str | None = None  # the budget's corrector bundle (None: the one the adapter names; "shift": none)
    sample_proposals: bool = False  # the corrector samples its proposals

    def __post_init__(self):
        for name in ("source", "out"):  # a Path is as good as a str
            if not isinstance(getattr(self, name), (str, os.PathLike)):
                raise V2TError(f"{name} must be a file path (str or Path), got {getattr(self, name)!r}")
            setattr(self, name, os.fspath(getattr(self, name)))
        if Path(self.out).suffix not in FORMATS:
            raise V2TError(f"--out {self.out} must end in .jsonl or .tsv (the format of the rows)")
        if self.on_nan not in NAN_POLICIES:
            raise V2TError(f"--on-nan must be one of {list(NAN_POLICIES)}, got {self.on_nan!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise V2TError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT
        ):
            raise V2TError(f"--seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")


@dataclass
class PreparedJob:
    """A job checked before any model loads: its source, what OUT.meta.json records, the row to start from."""

    source: Source
    identity: dict
    start: int


def prepare_job(
    job: InvertJob, adapter_dir: str | Path, label: str | None = None, config: BundleConfig | None = None
) -> PreparedJob:
    """Check the source, the decoding options and OUT against its meta file, all before the models load.

    Args:
        adapter_dir: the adapter's bundle folder (its config and projector weights identify it in OUT.meta.json).
        label: how OUT.meta.json names the adapter (default: the folder's absolute path).
        config: the bundle's v2t_config, when the caller has validated it already.
    """
    from ..bundle.adapter import validate_bundle
    from ..config import GenerationConfig
    from ..model.correct import check_role

    adapter_dir = Path(adapter_dir)
    config = config or validate_bundle(adapter_dir)
    check_role(config, "hypothesizer", str(adapter_dir))
    source = Source(job.source, config.encoder.dim, job.on_nan)
    options = GenerationConfig.of_bundle(config, **job.options)
    if options.num_return_sequences > 1:
        raise V2TError("invert writes one text per row: leave num_return_sequences at 1")
    plan = budget_plan(job, config, adapter_dir)
    weights = hashlib.sha256((adapter_dir / "projector.safetensors").read_bytes()).hexdigest()[:16]
    # neither the batch nor the cache changes the rows
    decoding = {k: v for k, v in asdict(options).items() if k not in ("batch_size", "cache")}
    identity = {
        "format": 1,
        "adapter": label or str(adapter_dir.resolve()),
        "projector_sha256": weights,
        "decoding": decoding,
        "source": str(Path(job.source).resolve()),
        "rows": len(source),
        "source_file_sha256": source.fingerprint(),
        "cosine": job.cosine,
        "on_nan": job.on_nan,
        "dtype": job.dtype,
        "seed": job.seed,
        "budget": job.budget or 1,
    }
    if plan is not None:  # what the budget is spent on, as the rule of this version chose it
        identity["budget_plan"] = plan
    return PreparedJob(source, identity, prepare_output(job, identity, source))


def budget_plan(job: InvertJob, config: BundleConfig, adapter_dir: Path) -> dict | None:
    """How the job's budget is spent (:func:`lora_v2t.model.beam.describe`, with the corrector it uses), checked;
    None for one greedy decode per row."""
    from ..model.beam import describe, plan_budget
    from ..model.correct import corrector_at_hand

    if job.budget is None and (job.sources is not None or job.sample_proposals or job.corrector is not None):
        raise V2TError(
            "sources, sample_proposals and corrector choose how a budget is spent: give budget (--budget N) too"
        )
    if job.budget is None:
        return None
    plan = plan_budget(
        job.budget,
        job.sources,
        corrector=job.corrector,
        has_corrector=lambda: corrector_at_hand(config.corrector, adapter_dir),
        sample=job.sample_proposals,
    )
    if not (plan.steps or plan.rerank):
        return None
    described = describe(plan)
    if "corrector" in plan.sources:
        described["corrector"] = job.corrector or config.corrector
    return described


def read_meta(out: str | Path) -> dict | None:
    """OUT's meta file as ``invert`` wrote it; None when there is none. Raises, naming the file, when it cannot be
    read or is not a JSON object."""
    meta = Path(str(out) + ".meta.json")
    if not meta.exists():
        return None
    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise V2TError(f"{meta} is unreadable ({exc}): delete {out} and {meta.name} to start over") from exc
    if not isinstance(saved, dict):
        raise V2TError(
            f"{meta} is not the meta file `lora-v2t invert` writes (not a JSON object): delete {out} and "
            f"{meta.name} to start over"
        )
    return saved


def recorded_budget(out: str | Path) -> int | None:
    """The budget an existing output was begun with (1 for one begun before budgets), so that running the same
    command again continues it; None for a new output."""
    saved = read_meta(out)
    if saved is None:
        return None
    budget = saved.get("budget", 1)
    if type(budget) is not int or budget < 1:
        raise V2TError(
            f"{out}.meta.json records budget {budget!r}, not a number of decodes >= 1 (edited or damaged): delete "
            f"{out} and {Path(out).name}.meta.json to start over"
        )
    return budget


def prepare_output(job: InvertJob, identity: dict, source: Source | None = None) -> int:
    """Check OUT against its meta file, drop a row cut short by a crash; return the next source row to invert."""
    out, meta = Path(job.out), Path(job.out + ".meta.json")
    if out.exists() and not out.is_file():
        raise V2TError(f"--out {out} is a folder: give a .jsonl or .tsv file")
    if out.exists() and not meta.exists():
        raise V2TError(
            f"{out} exists but was not written by `lora-v2t invert` (no {meta.name}): choose another "
            "--out, or delete it"
        )
    saved = read_meta(out)
    if saved is not None:
        check_identity(saved, identity, job, source)
    if not meta.exists():
        output_folder(out)
        try:
            atomic_write(meta, json.dumps(identity, ensure_ascii=False, indent=1), advice=ADVICE)
        except OSError as exc:
            raise V2TError(f"cannot write {meta} ({exc.strerror or exc}): give an --out in a writable folder") from exc
    return _resume_position(out, source)


def check_identity(saved: dict, identity: dict, job: InvertJob, source: Source | None) -> None:
    """Refuse to continue OUT when its meta file ``saved`` differs from this job's ``identity``; a key that
    outputs begun by older versions lack is skipped with a warning (``seed`` was None then)."""
    out, meta = Path(job.out), Path(job.out + ".meta.json")
    for key, value in identity.items():
        if key == "source_file_sha256" and key not in saved and "source_sha256" in saved and source is not None:
            key, value = "source_sha256", source.legacy_fingerprint()  # begun before whole files were hashed
        if key == "budget" and key not in saved:  # begun before budgets: one decode per row
            saved = saved | {"budget": 1}
        if key in ("dtype", "source_file_sha256", "source_sha256") and key not in saved:
            logger.warning("%s does not record the %s of its rows; continuing with %s", meta, key, value)
            continue
        if key in ("source_file_sha256", "source_sha256") and saved[key] != value:
            raise V2TError(
                f"{out} was written from another content of {job.source} (the file changed since): "
                f"choose another --out, or delete {out} and {meta.name} to start over"
            )
        if saved.get(key) != value:
            raise V2TError(
                f"{out} was written with another {_changed(key, saved.get(key), value)}: choose another "
                f"--out, or delete {out} and {meta.name} to start over"
            )


def _changed(key: str, was, now) -> str:
    """What changed of ``key``: the options that differ, for a dict of options (the decoding), else both values."""
    if isinstance(was, dict) and isinstance(now, dict):
        keys = [k for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k)]
        return f"{key}: " + ", ".join(f"{k} {was.get(k)!r}, now {now.get(k)!r}" for k in keys)
    return f"{'number of source rows' if key == 'rows' else key} ({was!r}, now {now!r})"


def output_folder(out: str | Path) -> Path:
    """OUT's folder, created if missing (with a note: a mistyped path would otherwise go unnoticed); one line
    naming the problem where it cannot be."""
    folder = Path(out).parent
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise V2TError(
                f"cannot create the folder of --out {out} ({exc.strerror or exc}): give an --out in a writable folder"
            ) from exc
        logger.warning("created the folder %s for %s", folder, out)
    return folder


@contextmanager
def output_lock(out: str | Path):
    """Hold OUT's lock (``OUT.lock``) for the ``with`` block: a second invert writing the same OUT is refused,
    naming the process that writes it, instead of interleaving its rows."""
    output_folder(out)
    with held(
        str(out) + ".lock",
        lambda holder: (
            f"{out} is being written by {holder} (another `lora-v2t invert`): wait for it to end, or give another --out"
        ),
        lambda reason: f"cannot lock {out} ({reason}): give an --out in a writable folder",
    ):
        yield


def _resume_position(out: Path, source: Source | None = None) -> int:
    """The source row after the last complete row of OUT (0 for a new file); a trailing partial row is cut, and
    rows out of order, repeated or missing (an edited or damaged OUT) are refused (see :func:`_check_rows`)."""
    if not out.exists() or out.stat().st_size == 0:
        if out.suffix == ".tsv":
            atomic_write(out, "index\ttext\tcosine\n", advice=ADVICE)
        return 0
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning(
            "%s ends with a row cut short (%d bytes): dropping it and inverting that row again", out, len(data) - end
        )
        with open(out, "r+b") as handle:
            handle.truncate(end)
    rows = [line for line in split_lines(data[:end].decode("utf-8")) if line and not line.startswith("index\t")]
    if not rows:
        return 0
    try:
        last = parse_row(out.suffix, rows[-1])[0]
    except (ValueError, KeyError, TypeError) as exc:
        raise V2TError(
            f"{out}: its last row is not one `lora-v2t invert` writes ({exc}): choose another --out, or "
            f"delete {out} and its .meta.json to start over"
        ) from exc
    _check_rows(out, rows, source)
    return last + 1


def _check_rows(out: Path, rows: list[str], source: Source | None) -> None:
    """Refuse OUT when its rows' indices are not increasing, or skip a row that is not one ``--on-nan skip``
    skipped (a row of NaN or inf): OUT was edited or damaged, and continuing after its last row would leave it
    incomplete while calling it complete."""
    fix = f"choose another --out, or delete {out} and its .meta.json to start over"
    try:
        indices = np.array([parse_row(out.suffix, row)[0] for row in rows], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise V2TError(f"{out}: a row is not one `lora-v2t invert` writes ({exc}): {fix}") from exc
    if indices[0] < 0 or (np.diff(indices) <= 0).any():
        raise V2TError(
            f"{out}: its rows are not those `lora-v2t invert` wrote: they are out of order or repeated "
            f"(edited or damaged): {fix}"
        )
    gap = np.ones(int(indices[-1]) + 1, dtype=bool)
    gap[indices] = False
    missing = np.flatnonzero(gap)
    if len(missing) and source is not None and source.vectors is not None:
        missing = missing[np.isfinite(np.asarray(source.vectors[missing])).all(axis=1)]  # skipped: NaN or inf
    if len(missing):
        raise V2TError(
            f"{out}: its rows are not those `lora-v2t invert` wrote: row(s) {missing[:5].tolist()} are "
            f"missing (edited or damaged): {fix}"
        )


def parse_row(suffix: str, line: str) -> tuple[int, str, float | None]:
    """(index, text, cosine or None) of a row :func:`format_rows` wrote (one line, without its newline)."""
    if suffix == ".jsonl":
        row = json.loads(line)
        return int(row["index"]), str(row["text"]), row.get("cosine")
    index, text, cosine = line.split("\t")
    return int(index), unescape_tsv(text), float(cosine) if cosine else None


def format_rows(suffix: str, indices, texts: list[str], cosines) -> str:
    """JSONL objects, or TSV lines (tabs, newlines, carriage returns and backslashes in texts escaped as \\t,
    \\n, \\r, \\\\): one line per row, split at \\n only (:func:`parse_row` reads a row back)."""
    lines = []
    for i, (index, text) in enumerate(zip(indices, texts, strict=True)):
        cosine = None if cosines is None else round(float(cosines[i]), 4)
        if suffix == ".jsonl":
            row = {"index": int(index), "text": text} | ({} if cosine is None else {"cosine": cosine})
            lines.append(json.dumps(row, ensure_ascii=False))
        else:
            lines.append(f"{int(index)}\t{escape_tsv(text)}\t{'' if cosine is None else cosine}")
    return "".join(line + "\n" for line in lines)


def append_rows(out: Path, text: str) -> None:
    """Append complete rows in one write; a write that fails (a full disk) leaves the file as it was."""
    complete = "the rows written so far are complete"
    try:
        append_complete(
            out,
            text.encode("utf-8"),
            advice=f"{complete}; free some space there, then run the same command again to continue",
        )
    except OSError as exc:
        raise V2TError(
            f"cannot write to {out} ({exc.strerror or exc}): {complete}; run the same command again to "
            "continue once the cause is fixed"
        ) from exc


def batch_seed(seed: int | None, first_row: int) -> int | None:
    """The seed of the batch starting at ``first_row``: drawn from the job's seed and that row, so that a job
    continued after a stop samples its later batches as an uninterrupted one (with the same batch size)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, first_row]).generate_state(1, np.uint64)[0]) % SEED_LIMIT


def auto_batch_size(v2t: Vector2Text, max_new_tokens: int) -> int:
    """Vectors decoded together: what half the free memory holds of the KV cache (at most 512 on a GPU, 64 on a
    CPU, where larger batches gain little)."""
    import torch

    cfg = v2t.base_model.config
    layers = getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 12)
    per_row = 2 * layers * v2t.backbone_info["hidden_size"] * (max_new_tokens + 8) * 4  # keys and values, fp32
    if v2t.device.type == "cuda":
        free, cap = torch.cuda.mem_get_info(v2t.device)[0], 512
    else:
        free, cap = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), 64
    return int(max(1, min(cap, free // 2 // per_row)))


def invert_file(v2t: Vector2Text, job: InvertJob, adapter_dir: str | Path, show_progress: bool = True) -> dict:
    """Invert every row of ``job.source`` not yet in ``job.out`` with ``v2t`` (loaded from ``adapter_dir``)."""
    loaded = v2t.backbone_info["compute_dtype"]
    if job.dtype not in (None, loaded):
        raise V2TError(
            f"the job asks for dtype {job.dtype} but the base was loaded in {loaded}: load it with "
            f"load_adapter(..., dtype={job.dtype!r})"
        )
    job = replace(job, dtype=loaded)
    with output_lock(job.out):
        return run_job(v2t, job, prepare_job(job, adapter_dir), show_progress)


def run_job(v2t: Vector2Text, job: InvertJob, prepared: PreparedJob, show_progress: bool = True) -> dict:
    """Decode the rows from ``prepared.start`` on, appending each batch; returns counts (written, skipped,
    resumed_at, batch_size)."""
    from tqdm.auto import tqdm

    from ..model.generate import reembed_cosines

    source, start, out = prepared.source, prepared.start, Path(job.out)
    opts = v2t.generation_defaults().updated(**job.options)
    batch = job.batch_size or auto_batch_size(v2t, opts.max_new_tokens)
    if start:
        logger.info("%s holds rows up to %d: continuing from row %d", out, start - 1, start)
    counts = {"written": 0, "skipped": 0, "resumed_at": start, "batch_size": batch}
    bar = tqdm(total=len(source), initial=start, unit="row", desc="inverting", disable=not show_progress)
    for begin in range(start, len(source), batch):
        stop = min(begin + batch, len(source))
        vectors = source.batch(v2t, begin, stop)
        keep = np.isfinite(vectors).all(axis=1)
        counts["skipped"] += int((~keep).sum())
        indices, vectors = np.arange(begin, stop)[keep], vectors[keep]
        if len(vectors):
            texts = v2t.generate(
                vectors,
                seed=batch_seed(job.seed, begin),
                budget=job.budget,
                sources=job.sources,
                corrector=job.corrector,
                sample_proposals=job.sample_proposals,
                **(job.options | {"batch_size": batch}),
            )
            cosines = reembed_cosines(v2t, texts, vectors, empty=0.0) if job.cosine else None
            append_rows(out, format_rows(out.suffix, indices, texts, cosines))
            counts["written"] += len(texts)
        bar.update(stop - begin)
    bar.close()
    return counts
