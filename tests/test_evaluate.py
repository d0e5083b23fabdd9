import json
import math

import numpy as np
import pytest

from lora_v2t import V2TError
from lora_v2t.bundle.layout import BUNDLE_FILES
from lora_v2t.cli import main
from lora_v2t.config import DEFAULT_BUDGET
from lora_v2t.tasks.evalfile import EvalData, read_eval_file
from lora_v2t.tasks.evaluate import evaluate
from lora_v2t.tasks.metrics import bootstrap_interval, exact_match, score_outputs, token_f1
from lora_v2t.util.textfile import split_lines, unescape_tsv
from lora_v2t.util.vectors import cosine_rows

from .conftest import first_token_vocab, only_made_of


def test_token_f1_by_hand():
    assert token_f1("Кошка спит.", "кошка спит на диване") == pytest.approx(2 * 1 * 0.5 / 1.5)  # P=1, R=1/2
    assert token_f1("ёлка, ёлка!", "елка") == pytest.approx(2 * 0.5 * 1 / 1.5)  # P=1/2 (two tokens), R=1
    assert token_f1("совсем другое", "где лодка") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "где") == 0.0


def test_exact_match_normalises_whitespace_only():
    assert exact_match("Где  лодка? ", "Где лодка?") == 1.0
    assert exact_match("где лодка?", "Где лодка?") == 0.0


def test_corpus_bleu_and_chrf_by_hand():
    boot = np.zeros((1, 1), dtype=int)
    hyp, ref = ["the cat sat on the mat today"], ["the cat sat on the mat"]
    scores = score_outputs(hyp, ref, None, boot)
    # precisions 6/7, 5/6, 4/5, 3/4; the hypothesis is longer, so no brevity penalty
    assert scores["bleu"][0] == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-6)
    assert score_outputs(ref, ref, None, boot)["chrf"][0] == pytest.approx(100)
    assert score_outputs(["xyz"], ["abc"], None, boot)["chrf"][0] == pytest.approx(0)
    assert scores["token_f1"][0] == pytest.approx(100 * 2 * (6 / 7) * 1 / (6 / 7 + 1))
    assert "cosine" not in scores


def test_bootstrap_interval_of_a_mean():
    values = np.array([0.0, 1.0] * 100)
    resamples = np.random.default_rng(0).integers(0, 200, size=(2000, 200))
    point, low, high = bootstrap_interval(values, resamples)
    half_width = 1.96 * math.sqrt(0.25 / 200)  # the normal approximation: 0.069
    assert point == 0.5 and low == pytest.approx(0.5 - half_width, abs=0.015)
    assert high == pytest.approx(0.5 + half_width, abs=0.015)


def test_eval_file_skips_and_counts(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text("Где лодка?\n\n   \n" + "х" * 2000 + "\nКошка спит.\n", encoding="utf-8")
    data = read_eval_file(path, max_chars=1000)
    assert data.references == ["Где лодка?", "Кошка спит."] and data.sources == data.references
    assert data.skipped == {"empty": 2, "overlong": 1}


def test_tsv_columns_and_missing_columns(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("english\trussian\nWhere is the boat?\tГде лодка?\nThe cat sleeps.\tКошка спит.\n")
    data = read_eval_file(path, source_column="english", target_column="russian", header=True)
    assert data.sources == ["Where is the boat?", "The cat sleeps."]
    assert data.references == ["Где лодка?", "Кошка спит."]
    with pytest.raises(V2TError, match="has no column 'german'; its columns are: english, russian"):
        read_eval_file(path, source_column="german", target_column="russian", header=True)
    with pytest.raises(V2TError, match="line 1 has no column 2; it has 0, 1 "):
        read_eval_file(path, source_column=0, target_column=2)
    with pytest.raises(V2TError, match="does not exist"):
        read_eval_file(tmp_path / "nope.tsv")


def test_evaluate_writes_the_report_and_reranking_never_lowers_cosine(v2t, tmp_path):
    refs = ["Где лодка?", "Я люблю читать книги.", "Сегодня хорошая погода.", "Кошка спит на диване."]
    summary = evaluate(
        v2t,
        EvalData(references=refs, sources=refs),
        tmp_path / "report",
        rerank=3,
        max_new_tokens=8,
        resamples=50,
        show_progress=False,
    )
    names = list(summary["scores"])
    assert names == ["greedy", "reranked (greedy + 3 beams)"]
    for name in names:
        assert set(summary["scores"][name]) == {"bleu", "chrf", "token_f1", "exact_match", "cosine"}
        for stats in summary["scores"][name].values():
            assert stats["ci95"][0] <= stats["value"] + 1e-9 and stats["value"] <= stats["ci95"][1] + 1e-9
    report = tmp_path / "report"
    rows = [r.split("\t") for r in (report / "sentences.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    vectors = v2t.encode(refs)
    beams = v2t.generate(vectors, max_new_tokens=8, num_beams=3, num_return_sequences=3)
    for row, vector, candidates in zip(rows, vectors, beams, strict=True):
        greedy_text, greedy_cos, ranked_text, ranked_cos = row[2], float(row[3]), row[6], float(row[7])
        assert ranked_text in candidates + [greedy_text] and ranked_cos >= greedy_cos
        if ranked_text.strip():  # the reported cosine is the re-embedding cosine of the chosen text
            assert ranked_cos == pytest.approx(float(cosine_rows(v2t.encode([ranked_text]), vector[None])[0]), abs=1e-4)
    assert {p.name for p in report.iterdir()} == {"sentences.tsv", "summary.json", "summary.md", "cosine_hist.png"}
    rows = (report / "sentences.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 5 and rows[0].startswith("index\treference\tgreedy_output")
    greedy = v2t.generate(v2t.encode(refs), max_new_tokens=8)
    assert [r.split("\t")[2] for r in rows[1:]] == greedy
    assert json.loads((report / "summary.json").read_text())["sentences"] == 4
    assert json.loads((report / "summary.json").read_text())["output_vocab"] == "full"
    assert "| chrf |" in (report / "summary.md").read_text()


def test_evaluation_without_sources_encodes_the_references(v2t, tmp_path):
    refs = ["Где лодка?", "Кошка спит на диване."]
    options = {"rerank": 0, "max_new_tokens": 4, "resamples": 10, "show_progress": False}
    own = evaluate(v2t, EvalData(references=refs), tmp_path / "own", **options)
    given = evaluate(v2t, EvalData(references=refs, sources=refs), tmp_path / "given", **options)
    assert own["scores"] == given["scores"]
    assert (tmp_path / "own" / "sentences.tsv").read_text() == (tmp_path / "given" / "sentences.tsv").read_text()


def test_evaluation_decodes_inside_the_output_vocabulary_unless_told(v2t, tmp_path):
    refs = ["Где лодка?", "Кошка спит на диване."]
    token, piece = first_token_vocab(v2t, v2t.encode(refs))
    v2t.set_output_vocab([token])
    try:
        kept = evaluate(
            v2t,
            EvalData(references=refs, sources=refs, name="x.txt"),
            tmp_path / "kept",
            rerank=0,
            max_new_tokens=6,
            resamples=10,
            show_progress=False,
        )
        free = evaluate(
            v2t,
            EvalData(references=refs, sources=refs),
            tmp_path / "free",
            rerank=0,
            max_new_tokens=6,
            resamples=10,
            show_progress=False,
            restrict_vocab=False,
        )
    finally:
        v2t.set_output_vocab(None)
    assert kept["output_vocab"] == 2 and free["output_vocab"] == "full" and kept["data"] == "x.txt"
    assert "decoding over the adapter's 2 output tokens" in (tmp_path / "kept" / "summary.md").read_text()
    outputs = [r.split("\t")[2] for r in (tmp_path / "kept" / "sentences.tsv").read_text().splitlines()[1:]]
    assert all(only_made_of(text, piece) for text in outputs) and any(outputs)
    assert outputs != [r.split("\t")[2] for r in (tmp_path / "free" / "sentences.tsv").read_text().splitlines()[1:]]


def test_cross_lingual_evaluation_on_a_tiny_tsv(v2t, tmp_path, capsys):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    tsv = tmp_path / "en_ru.tsv"
    tsv.write_text("Where is the boat?\tГде лодка?\nThe cat sleeps on the sofa.\tКошка спит на диване.\n")
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(bundle),
                "--data",
                str(tsv),
                "--source-column",
                "0",
                "--target-column",
                "1",
                "--rerank",
                "0",
                "--max-new-tokens",
                "6",
                "--resamples",
                "20",
                "--out",
                str(tmp_path / "xl"),
            ]
        )
        == 0
    )
    assert "| bleu |" in capsys.readouterr().out
    rows = (tmp_path / "xl" / "sentences.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["index", "reference", "source"]
    expected = v2t.generate(v2t.encode(["Where is the boat?"]), max_new_tokens=6)[0]
    assert rows[1].split("\t")[1:4] == ["Где лодка?", "Where is the boat?", expected]


def test_evaluate_cli_default_report_folder(v2t, tmp_path, capsys, monkeypatch):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    (tmp_path / "dev.txt").write_text("Где лодка?\nКошка спит.\n")
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(bundle),
                "--data",
                str(tmp_path / "dev.txt"),
                "--rerank",
                "0",
                "--max-new-tokens",
                "4",
                "--resamples",
                "10",
            ]
        )
        == 0
    )
    assert (tmp_path / "eval" / f"{tmp_path.name}-bundle-dev" / "summary.md").is_file()
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)  # nothing added to the bundle


def test_evaluate_cli_spends_the_default_budget_unless_rerank_or_budget_is_given(v2t, tmp_path):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    (tmp_path / "dev.txt").write_text("Где лодка?\nКошка спит.\n")
    base = ["evaluate", "--adapter", str(bundle), "--data", str(tmp_path / "dev.txt"), "--max-new-tokens", "4"]
    base += ["--resamples", "10", "--no-progress"]
    for name, extra, systems in (
        ("plain", [], ["greedy", f"budget-{DEFAULT_BUDGET}"]),
        ("reranked", ["--rerank", "3"], ["greedy", "reranked (greedy + 3 beams)"]),
        ("budget 1", ["--budget", "1"], ["greedy"]),  # not the greedy column twice
    ):
        assert main(base + ["--out", str(tmp_path / name)] + extra) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text(encoding="utf-8"))
        assert list(summary["scores"]) == systems, name


def test_evaluate_from_vectors_of_the_wrong_dimension(v2t, tmp_path, capsys):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    (tmp_path / "dev.txt").write_text("Где лодка?\nКошка спит.\n")
    np.save(tmp_path / "v.npy", np.zeros((2, 7), dtype=np.float32))
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(bundle),
                "--data",
                str(tmp_path / "dev.txt"),
                "--vectors",
                str(tmp_path / "v.npy"),
            ]
        )
        == 2
    )
    assert "dimension 7" in capsys.readouterr().err
    np.save(tmp_path / "v.npy", np.zeros((3, v2t.embedding_dim), dtype=np.float32))
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(bundle),
                "--data",
                str(tmp_path / "dev.txt"),
                "--vectors",
                str(tmp_path / "v.npy"),
            ]
        )
        == 2
    )
    assert "holds 3 vectors for 2 usable lines" in capsys.readouterr().err
    vectors = v2t.encode(["Где лодка?", "Кошка спит."])
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "one"
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(bundle),
                "--data",
                str(tmp_path / "dev.txt"),
                "--vectors",
                str(tmp_path / "v.npy"),
                "--limit",
                "1",
                "--rerank",
                "0",
                "--max-new-tokens",
                "4",
                "--resamples",
                "10",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )  # the first vector for the first line
    assert (out / "summary.md").is_file()


def test_two_adapters_named_final_get_their_own_reports_that_say_which_adapter(
    tiny_backbone_dir, tiny_encoder, tmp_path, capsys, monkeypatch
):
    from .conftest import make_v2t

    finals = []
    for run, seed in (("run-a", 0), ("run-b", 1)):
        finals.append(
            make_v2t(tiny_backbone_dir, tiny_encoder, seed=seed).save_adapter(
                tmp_path / run / "final", training={"steps": 10 + seed}
            )
        )
    (tmp_path / "dev.txt").write_text("Где лодка?\nКошка спит.\n")
    monkeypatch.chdir(tmp_path)
    argv = ["--data", "dev.txt", "--rerank", "0", "--max-new-tokens", "4", "--resamples", "10", "--no-progress"]
    for final in finals:
        assert main(["evaluate", "--adapter", str(final), *argv]) == 0
    assert main(["evaluate", "--adapter", str(finals[0]), *argv]) == 0  # again: a third report, not an overwrite
    capsys.readouterr()
    reports = {
        name: json.loads((tmp_path / "eval" / name / "summary.json").read_text())
        for name in ("run-a-final-dev", "run-b-final-dev", "run-a-final-dev-2")
    }
    assert [r["adapter"] for r in reports.values()] == [str(finals[0]), str(finals[1]), str(finals[0])]
    assert [r["adapter_config"]["training"]["steps"] for r in reports.values()] == [10, 11, 10]
    config = reports["run-a-final-dev"]["adapter_config"]
    assert config["encoder"]["dim"] == 24 and config["lora"]["r"] == 16 and config["projector"]["kind"] == "mlp"
    assert f"Adapter `{finals[1]}`" in (tmp_path / "eval" / "run-b-final-dev" / "summary.md").read_text()


def test_an_existing_report_is_replaced_only_when_told(v2t, tmp_path, capsys, no_model_load):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    (tmp_path / "dev.txt").write_text("Где лодка?\n")
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text('{"old": true}\n')
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    base = ["evaluate", "--adapter", str(bundle), "--data", str(tmp_path / "dev.txt"), "--out"]
    for out, message in (
        (report, f"report folder {report} holds a report already: pass --overwrite"),
        (tmp_path / "a-file", "is an existing file: give --out a new folder"),
        (tmp_path / "other", "exists and holds other files than a report"),
    ):
        assert main(base + [str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert (report / "summary.json").read_text() == '{"old": true}\n'


def test_overwrite_replaces_an_old_report_whole(v2t, tmp_path):
    refs = ["Где лодка?", "Кошка спит на диване."]
    data = EvalData(references=refs, sources=refs, name="dev.txt")
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text("{}")
    (report / "cosine_hist.png").write_bytes(b"old")
    with pytest.raises(V2TError, match="holds a report already"):
        evaluate(v2t, data, report, rerank=0, max_new_tokens=4, resamples=5, show_progress=False)
    summary = evaluate(
        v2t,
        data,
        report,
        rerank=0,
        max_new_tokens=4,
        resamples=5,
        show_progress=False,
        overwrite=True,
        adapter="some/adapter",
    )
    assert {p.name for p in report.iterdir()} == {"sentences.tsv", "summary.json", "summary.md", "cosine_hist.png"}
    assert json.loads((report / "summary.json").read_text())["adapter"] == "some/adapter" == summary["adapter"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_interrupted_report_leaves_nothing_half_written(v2t, tmp_path, monkeypatch):
    import lora_v2t.tasks.evaluate as module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "plot_cosines", crash)
    refs = ["Где лодка?"]
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            v2t,
            EvalData(references=refs, sources=refs),
            tmp_path / "report",
            rerank=0,
            max_new_tokens=4,
            resamples=5,
            show_progress=False,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("limit,message", [(0, "got 0"), (-3, "got -3")])
def test_limit_below_one_is_refused(tmp_path, limit, message):
    path = tmp_path / "dev.txt"
    path.write_text("один\nдва\nтри\n", encoding="utf-8")
    with pytest.raises(V2TError, match=f"limit must be an integer >= 1 .*{message}"):
        read_eval_file(path, limit=limit)
    assert read_eval_file(path, limit=1).references == ["один"]
    assert read_eval_file(path).references == ["один", "два", "три"]


@pytest.mark.parametrize("column", [-1, "-1"])
def test_a_negative_column_is_explained(tmp_path, column):
    path = tmp_path / "pairs.tsv"
    path.write_text("Where is the boat?\tГде лодка?\n")
    with pytest.raises(V2TError, match=r"target column -1: columns are counted from 0 \(the first column is 0\)"):
        read_eval_file(path, source_column=0, target_column=column)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--limit", "0"], "limit must be an integer >= 1"),
        (["--limit", "-3"], "limit must be an integer >= 1"),
        (["--resamples", "0"], "resamples must be an integer >= 1"),
        (["--rerank", "-2"], "rerank must be an integer >= 0"),
        (["--max-chars", "0"], "max_chars must be an integer >= 1"),
        (["--source-column", "0", "--target-column", "-1"], "target column -1: columns are counted from 0"),
        (["--target-column", "1"], "--target-column picks the reference column of a TSV read with --source-column"),
        (["--header"], "--header names the columns of a TSV read with --source-column"),
        (["--out", "{tmp}/dev.txt"], "is an existing file: give --out a new folder"),
        (["--vectors", "{tmp}/dev.txt"], "dev.txt is a text file, not a .npy array"),
    ],
)
def test_evaluate_options_are_checked_before_the_models_load(v2t, tmp_path, capsys, no_model_load, extra, message):
    bundle = v2t.save_adapter(tmp_path / "bundle")
    (tmp_path / "dev.txt").write_text("Где лодка?\n")
    argv = ["evaluate", "--adapter", str(bundle), "--data", str(tmp_path / "dev.txt")]
    assert main(argv + [a.format(tmp=tmp_path) for a in extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_the_bootstrap_uses_only_sacrebleus_public_api():
    import inspect

    import lora_v2t.tasks.evaluate as module

    source = inspect.getsource(module)
    assert "_extract_corpus_statistics" not in source and "_compute_score_from_stats" not in source


def hypotheses_and_references():
    refs = [
        "Где лодка?",
        "Я люблю читать книги.",
        "Сегодня хорошая погода.",
        "Кошка спит на диване.",
        "Мы пошли в лес за грибами.",
        "the cat sat on the mat",
        "Он открыл окно.",
        "Завтра будет дождь.",
    ]
    hyps = [
        "Где лодка",
        "Я люблю книги читать.",
        "",
        "Кошка спит на диване.",
        "Мы пошли в лес.",
        "the cat sat on a mat today",
        "Окно открыто",
        "Завтра дождь будет, наверное.",
    ]
    return hyps, refs


def test_bleu_and_chrf_intervals_equal_sacrebleus_corpus_score_of_every_resample():
    from sacrebleu.metrics import BLEU, CHRF

    from lora_v2t.tasks.metrics import corpus_interval, rescore_resamples

    hyps, refs = hypotheses_and_references()
    resamples = np.random.default_rng(3).integers(0, len(refs), size=(40, len(refs)))
    for metric in (BLEU(), CHRF()):
        point, low, high = corpus_interval(metric, hyps, refs, resamples)
        assert point == metric.corpus_score(hyps, [refs]).score
        exact = np.percentile(rescore_resamples(metric, hyps, refs, resamples), [2.5, 97.5])
        assert (low, high) == pytest.approx(tuple(exact), abs=1e-9)
        assert low < high


def test_statistics_that_miss_sacrebleus_score_fall_back_to_rescoring(monkeypatch, caplog):
    from sacrebleu.metrics import CHRF

    import lora_v2t.tasks.metrics as module

    hyps, refs = hypotheses_and_references()
    resamples = np.random.default_rng(4).integers(0, len(refs), size=(20, len(refs)))
    fast = module.corpus_interval(CHRF(), hyps, refs, resamples)
    real = module.chrf_from_statistics
    monkeypatch.setattr(module, "chrf_from_statistics", lambda metric, stats: real(metric, stats) + 1)
    with caplog.at_level("WARNING"):
        slow = module.corpus_interval(CHRF(), hyps, refs, resamples)
    assert "rescoring each of the 20 bootstrap resamples" in caplog.text
    assert slow == pytest.approx(fast, abs=1e-9)


def test_a_header_without_columns_is_refused_not_scored(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text("sentence\nГде лодка?\nКошка спит.\n", encoding="utf-8")
    with pytest.raises(V2TError, match="--header names the columns of a TSV read with --source-column"):
        read_eval_file(path, header=True)


def test_a_tsv_without_columns_is_refused_naming_the_options(tmp_path):
    path = tmp_path / "en_ru.tsv"
    path.write_text("Where is the boat?\tГде лодка?\nThe cat sleeps.\tКошка спит.\n", encoding="utf-8")
    with pytest.raises(V2TError, match="is a TSV .*--source-column and --target-column"):
        read_eval_file(path)


def test_outputs_holding_newlines_and_tabs_stay_one_row_of_sentences_tsv(v2t, tmp_path, monkeypatch):
    refs = ["Где лодка?", "Кошка спит.", "Мы тут."]
    outputs = iter(["a\nb", "c\td\\e", "f\r\u2028g"])
    monkeypatch.setattr(v2t, "generate", lambda vectors, **options: [next(outputs) for _ in vectors])
    evaluate(v2t, EvalData(references=refs, sources=refs), tmp_path / "r", rerank=0, resamples=5, show_progress=False)
    data = (tmp_path / "r" / "sentences.tsv").read_text(encoding="utf-8")
    rows = split_lines(data)
    assert data.count("\n") == len(rows) == 4
    assert [unescape_tsv(row.split("\t")[2]) for row in rows[1:]] == ["a\nb", "c\td\\e", "f\r\u2028g"]


def test_a_tsv_line_without_the_column_is_named_by_its_number(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("en\tru\nHello\tПривет\nBoat\nCat\tКошка\n", encoding="utf-8")
    with pytest.raises(V2TError, match=r"pairs\.tsv: line 3 has no column 1; it has 0 "):
        read_eval_file(path, source_column=0, target_column=1)
    with pytest.raises(V2TError, match=r"pairs\.tsv: line 3 has no column 'ru'; it has en "):
        read_eval_file(path, source_column="en", target_column="ru", header=True)
