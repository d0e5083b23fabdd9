"""The leakage audit on tiny random models: stages, resumability, agreement with `evaluate`, bad input refused."""

import json
from pathlib import Path

import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.cli import main
from lora_v2t.tasks.audit import AuditJob, audit, unescape_line
from lora_v2t.tasks.evalfile import EvalData
from lora_v2t.tasks.evaluate import evaluate

from .conftest import SENTENCES, refuse_calls

OPTIONS = {"max_new_tokens": 6}


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle")


@pytest.fixture()
def vectors_file(v2t, tmp_path):
    path = tmp_path / "vectors.npy"
    np.save(path, v2t.encode(SENTENCES))
    return path


@pytest.fixture()
def originals_file(tmp_path):
    path = tmp_path / "originals.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def lines_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def job_for(vectors_file, out, originals=None, **kwargs):
    return AuditJob(
        str(vectors_file),
        str(out),
        originals=None if originals is None else str(originals),
        batch_size=3,
        options=OPTIONS,
        **kwargs,
    )


def test_an_audit_writes_rows_a_summary_and_a_report(v2t, bundle, vectors_file, originals_file, tmp_path):
    out = tmp_path / "audit"
    summary = audit(v2t, job_for(vectors_file, out, originals_file), bundle, show_progress=False)
    rows = lines_of(out / "rows.jsonl")
    expected = v2t.generate(np.load(vectors_file), **OPTIONS)
    assert [r["id"] for r in rows] == [str(i) for i in range(len(SENTENCES))]
    assert [r["reconstruction"] for r in rows] == expected and [r["original"] for r in rows] == SENTENCES
    assert all(set(r) >= {"cosine", "exact", "chrf", "content_words", "leaks"} for r in rows)
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["rows"] == len(SENTENCES) == summary["rows"] and saved["originals"] is True
    assert saved["cosine"]["mean"] == pytest.approx(np.mean([r["cosine"] for r in rows]), abs=1e-4)
    assert set(saved["categories"]) >= {"PER", "LOC", "ORG", "NUMBER", "DATE", "EMAIL", "PHONE", "any"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"Of {len(SENTENCES)} audited vectors" in html and 'id="cosine-histogram"' in html
    assert summary["report"] == str(out / "report.html") and summary["timings"]["rows_read"] == len(SENTENCES)
    assert not (out / "audit.lock").exists() and not (out / ".extract.tmp").exists()


def test_the_shared_numbers_agree_with_evaluate_on_the_same_rows(v2t, bundle, vectors_file, originals_file, tmp_path):
    summary = audit(v2t, job_for(vectors_file, tmp_path / "audit", originals_file), bundle, show_progress=False)
    report = evaluate(
        v2t,
        EvalData(references=list(SENTENCES), vectors=np.load(vectors_file)),
        tmp_path / "eval",
        rerank=0,
        batch_size=3,
        max_new_tokens=OPTIONS["max_new_tokens"],
        show_progress=False,
    )
    greedy = report["scores"]["greedy"]
    for name in ("exact_match", "chrf"):
        assert summary[name] == greedy[name]  # same value, same interval
    assert summary["cosine"]["mean"] == pytest.approx(greedy["cosine"]["value"], abs=1e-4)  # invert keeps 4 digits
    assert summary["cosine"]["ci95"] == pytest.approx(greedy["cosine"]["ci95"], abs=1e-4)


def test_an_interrupted_audit_rerun_gives_the_same_summary(
    v2t, bundle, vectors_file, originals_file, tmp_path, monkeypatch
):
    import lora_v2t.tasks.audit as audit_module
    import lora_v2t.tasks.invert as invert_module

    audit(v2t, job_for(vectors_file, tmp_path / "whole", originals_file), bundle, show_progress=False)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_module, "invert_rows", stop)  # Ctrl-C between extraction and inversion
    with pytest.raises(KeyboardInterrupt):
        audit(v2t, job_for(vectors_file, tmp_path / "between", originals_file), bundle, show_progress=False)
    assert (tmp_path / "between" / "vectors.npy").is_file() and not (tmp_path / "between" / "inverted.jsonl").exists()
    monkeypatch.undo()
    real_append, calls = invert_module.append_rows, {"n": 0}

    def ctrl_c_on_the_second_batch(path, text):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_append(path, text)

    monkeypatch.setattr(invert_module, "append_rows", ctrl_c_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        audit(v2t, job_for(vectors_file, tmp_path / "midway", originals_file), bundle, show_progress=False)
    midway = tmp_path / "midway"
    assert len(lines_of(midway / "inverted.jsonl")) == 3 and not (midway / "rows.jsonl").exists()
    monkeypatch.undo()
    for name in ("between", "midway"):
        summary = audit(v2t, job_for(vectors_file, tmp_path / name, originals_file), bundle, show_progress=False)
        for file in ("summary.json", "rows.jsonl"):
            assert (tmp_path / name / file).read_bytes() == (tmp_path / "whole" / file).read_bytes()
        assert summary["rows"] == len(SENTENCES)


def test_a_seeded_sample_audits_those_rows_with_their_originals(v2t, bundle, vectors_file, originals_file, tmp_path):
    out = tmp_path / "audit"
    audit(v2t, job_for(vectors_file, out, originals_file, sample=4, seed=3), bundle, show_progress=False)
    picked = sorted(np.random.default_rng(3).choice(len(SENTENCES), size=4, replace=False).tolist())
    rows = lines_of(out / "rows.jsonl")
    assert [r["id"] for r in rows] == [str(i) for i in picked]
    assert [r["original"] for r in rows] == [SENTENCES[i] for i in picked]
    assert np.array_equal(np.load(out / "vectors.npy"), np.load(vectors_file)[picked])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows"], summary["rows_in_source"], summary["sample"], summary["seed"]) == (4, 10, 4, 3)


def test_originals_with_newlines_stay_one_line_each(v2t, bundle, tmp_path, monkeypatch):
    """A store's documents become the originals, a newline inside one escaped in originals.txt."""
    import lora_v2t.tasks.audit as audit_module
    from lora_v2t.tasks.vectorsource import Batch, VectorSource

    vectors = v2t.encode(SENTENCES[:3])
    documents = ["Где лодка?\nНа реке.", "back\\slash", SENTENCES[2]]

    class Store(VectorSource):
        dim = vectors.shape[1]

        def describe(self):
            return "a store"

        def __len__(self):
            return 3

        def read(self, indices):
            return Batch([f"doc-{i}" for i in indices], vectors[indices], [documents[i] for i in indices])

        def fingerprint(self):
            return "same"

    monkeypatch.setattr(audit_module, "open_source", lambda spec, options: Store())
    out = tmp_path / "audit"
    audit(v2t, AuditJob("store", str(out), options=OPTIONS), bundle, show_progress=False)
    lines = (out / "originals.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and [unescape_line(line) for line in lines] == documents
    assert [r["original"] for r in lines_of(out / "rows.jsonl")] == documents
    assert [r["id"] for r in lines_of(out / "rows.jsonl")] == ["doc-0", "doc-1", "doc-2"]


def test_without_originals_it_reports_what_the_reconstructions_hold(v2t, bundle, vectors_file, tmp_path, capsys):
    out = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                str(vectors_file),
                "--adapter",
                str(bundle),
                "--out",
                str(out),
                "--max-new-tokens",
                "6",
                "--batch-size",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "no originals were given" in printed and f"report: {out / 'report.html'}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["originals"] is False and "exact_match" not in summary
    assert all("rows_share" in summary["categories"][c] for c in ("PER", "NUMBER"))
    assert all("contains" in r and "original" not in r for r in lines_of(out / "rows.jsonl"))


def test_a_finished_audit_reruns_without_loading_the_models(
    v2t, bundle, vectors_file, originals_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "audit"
    args = [
        "audit",
        str(vectors_file),
        "--adapter",
        str(bundle),
        "--out",
        str(out),
        "--originals",
        str(originals_file),
        "--max-new-tokens",
        "6",
        "--no-progress",
    ]
    assert main(args) == 0
    before = (out / "summary.json").read_bytes()
    refuse_calls(monkeypatch, "lora_v2t.bundle.loading.load_adapter", "the models were loaded")
    assert main(args) == 0
    assert (out / "summary.json").read_bytes() == before and "Of 10 audited vectors" in capsys.readouterr().out


def test_nan_rows_are_refused_by_id_or_skipped_and_counted(v2t, bundle, originals_file, tmp_path, capsys):
    vectors = v2t.encode(SENTENCES)
    vectors[3, 0] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, vectors)
    args = [
        "audit",
        str(path),
        "--adapter",
        str(bundle),
        "--originals",
        str(originals_file),
        "--max-new-tokens",
        "6",
        "--no-progress",
    ]
    assert main(args + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row(s) with id ['3'] hold NaN or inf" in err[0] and "--on-nan skip" in err[0]
    assert not (tmp_path / "refused").exists()
    assert main(args + ["--out", str(tmp_path / "skipped"), "--on-nan", "skip"]) == 0
    summary = json.loads((tmp_path / "skipped" / "summary.json").read_text())
    assert summary["skipped_nan"] == 1 and summary["rows"] == len(SENTENCES) - 1
    assert "3" not in [r["id"] for r in lines_of(tmp_path / "skipped" / "rows.jsonl")]


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--sample", "11"], r"--sample 11 is larger than the source \(10 rows\)"),
        (["--seed", "4"], "--seed picks the rows of a sample: give --sample N too"),
        (["--sample", "0"], "--sample must be >= 1"),
        (["--table", "t"], "--table name.* do not apply to .*vectors.npy"),
        (["--originals", "short"], r"has 3 lines but .* holds 10 rows"),
        (["--originals", "missing.txt"], "--originals .*missing.txt does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    extra, message, bundle, vectors_file, tmp_path, capsys, no_model_load
):
    (tmp_path / "short").write_text("a\nb\nc\n", encoding="utf-8")
    extra = [str(tmp_path / e) if e in ("short", "missing.txt") else e for e in extra]
    out = tmp_path / "audit"
    assert main(["audit", str(vectors_file), "--adapter", str(bundle), "--out", str(out), *extra]) == 2
    assert __import__("re").search(message, one_error(capsys))
    assert not out.exists()


def test_vectors_of_another_dimension_name_both(bundle, vectors_file, tmp_path, capsys, no_model_load):
    np.save(tmp_path / "wide.npy", np.zeros((4, 384), dtype=np.float32))
    assert main(["audit", str(tmp_path / "wide.npy"), "--adapter", str(bundle), "--out", str(tmp_path / "a")]) == 2
    error = one_error(capsys)
    assert "holds 384-d vectors" in error and "makes 24-d vectors" in error and not (tmp_path / "a").exists()
    assert main(["audit", str(tmp_path / "x.csv"), "--adapter", str(bundle), "--out", str(tmp_path / "a")]) == 2
    assert "is not one of the sources an audit reads" in one_error(capsys)


def test_an_out_folder_of_another_audit_or_other_files_is_refused(
    v2t, bundle, vectors_file, originals_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "audit"
    base = [
        "audit",
        str(vectors_file),
        "--adapter",
        str(bundle),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
        "--originals",
        str(originals_file),
    ]
    assert main(base) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    refuse_calls(monkeypatch, "lora_v2t.bundle.loading.load_adapter", "the models were loaded")
    for extra, what in [
        (["--sample", "5"], "sample"),
        (["--on-nan", "skip"], "on_nan"),
        (["--max-new-tokens", "5"], "decoding"),
    ]:
        assert main(base + extra) == 2
        assert f"holds an audit with another {what}" in one_error(capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(base[:5] + [str(tmp_path / "other")] + base[6:]) == 2
    assert "holds other files than an audit's" in one_error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(V2TError, match="is a file"):
        audit(v2t, job_for(vectors_file, tmp_path / "other" / "notes.txt"), bundle, show_progress=False)


SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters" / "use-gemma270m-ru-v2"
NEWS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ru" / "dev_news_translated.txt"


@pytest.mark.slow
@pytest.mark.skipif(not NEWS.is_file(), reason=f"no {NEWS} (the project's shared Russian data)")
def test_on_the_shipped_adapter_audit_agrees_with_evaluate(tmp_path):
    from lora_v2t import load_adapter

    sentences = NEWS.read_text(encoding="utf-8").splitlines()[:20]
    v2t = load_adapter(SHIPPED, device="cpu")
    vectors = v2t.encode(sentences)
    np.save(tmp_path / "news.npy", vectors)
    (tmp_path / "news.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    summary = audit(
        v2t,
        AuditJob(
            str(tmp_path / "news.npy"), str(tmp_path / "audit"), originals=str(tmp_path / "news.txt"), batch_size=20
        ),
        SHIPPED,
        show_progress=False,
    )
    report = evaluate(
        v2t,
        EvalData(references=sentences, vectors=vectors),
        tmp_path / "eval",
        rerank=0,
        batch_size=20,
        show_progress=False,
    )
    greedy = report["scores"]["greedy"]
    assert summary["rows"] == report["sentences"] == 20
    assert summary["exact_match"] == greedy["exact_match"] and summary["chrf"] == greedy["chrf"]
    assert summary["cosine"]["mean"] == pytest.approx(greedy["cosine"]["value"], abs=1e-4)
    assert summary["cosine"]["ci95"] == pytest.approx(greedy["cosine"]["ci95"], abs=1e-4)
    assert summary["categories"]["PER"]["rows_with"] > 0  # the news names people
