"""`lora-v2t compare`: two evaluation reports of the same sentences, paired."""

import json
import re

import numpy as np
import pytest

from lora_v2t.cli import main
from lora_v2t.tasks.compare import compare_reports, comparison_table, read_report
from lora_v2t.tasks.evalfile import EvalData
from lora_v2t.tasks.evaluate import evaluate
from lora_v2t.tasks.metrics import paired_corpus_interval, rescore_resamples
from lora_v2t.util.textfile import escape_tsv

REFS = ["Где лодка?", "Я люблю читать книги.", "Сегодня хорошая погода.", "Кошка спит на диване.", "Мы пошли в лес."]
FIRST = ["Где лодка?", "Я читаю книги.", "Погода.", "Кошка спит.", "Мы в лесу."]
SECOND = ["Где лодка?", "Я люблю читать книги.", "Сегодня хорошая погода.", "Собака спит.", "Мы\tв\nлесу."]


def report(v2t, folder, outputs, monkeypatch):
    """A real `evaluate` report of REFS whose greedy outputs are ``outputs``."""
    texts = iter(outputs)
    monkeypatch.setattr(v2t, "generate", lambda vectors, **options: [next(texts) for _ in vectors])
    data = EvalData(references=REFS, sources=REFS)
    return evaluate(v2t, data, folder, rerank=0, resamples=20, show_progress=False)


@pytest.fixture
def reports(v2t, tmp_path, monkeypatch):
    first = report(v2t, tmp_path / "first", FIRST, monkeypatch)
    second = report(v2t, tmp_path / "second", SECOND, monkeypatch)
    return tmp_path / "first", tmp_path / "second", first, second


def test_the_comparison_holds_each_reports_own_figures_and_their_paired_difference(reports):
    first_dir, second_dir, first, second = reports
    assert read_report(second_dir).outputs["greedy"] == SECOND  # tabs and newlines read back as evaluate wrote them
    result = compare_reports(read_report(first_dir), read_report(second_dir), resamples=200)
    figures = result["systems"]["greedy"]
    assert set(figures) == {"cosine", "chrf", "bleu", "token_f1", "exact_match"}
    for name, figure in figures.items():
        assert figure["first"] == pytest.approx(first["scores"]["greedy"][name]["value"], abs=1e-4)
        assert figure["second"] == pytest.approx(second["scores"]["greedy"][name]["value"], abs=1e-4)
        assert figure["difference"] == pytest.approx(figure["second"] - figure["first"], abs=1e-9)
        low, high = figure["ci95"]
        assert low - 1e-9 <= figure["difference"] <= high + 1e-9
    assert figures["exact_match"]["first"] == 20.0 and figures["exact_match"]["second"] == 60.0
    assert (figures["exact_match"]["second_better"], figures["exact_match"]["second_worse"]) == (2, 0)
    assert figures["chrf"]["difference"] > 0


def test_a_report_against_itself_differs_by_nothing(reports):
    first_dir = reports[0]
    result = compare_reports(read_report(first_dir), read_report(first_dir), resamples=50)
    for figure in result["systems"]["greedy"].values():
        assert figure["difference"] == 0 and figure["ci95"] == [0, 0]
        assert figure.get("second_better", 0) == figure.get("second_worse", 0) == 0


def test_the_paired_interval_is_sacrebleus_score_of_every_resample():
    from sacrebleu.metrics import BLEU, CHRF

    resamples = np.random.default_rng(5).integers(0, len(REFS), size=(60, len(REFS)))
    for metric in (BLEU(), CHRF()):
        first, second, low, high = paired_corpus_interval(metric, FIRST, SECOND, REFS, resamples)
        exact = rescore_resamples(metric, SECOND, REFS, resamples) - rescore_resamples(metric, FIRST, REFS, resamples)
        assert (low, high) == pytest.approx(tuple(np.percentile(exact, [2.5, 97.5])), abs=1e-9)
        assert (first, second) == tuple(metric.corpus_score(hyps, [REFS]).score for hyps in (FIRST, SECOND))


def test_the_command_prints_the_table_and_json(reports, capsys):
    first_dir, second_dir = reports[0], reports[1]
    assert main(["compare", str(first_dir), str(second_dir), "--resamples", "30"]) == 0
    table = capsys.readouterr().out
    assert "| greedy | exact match % | 20.0 | 60.0 | +40.0 [" in table and "| 2 / 0 |" in table
    assert main(["compare", str(first_dir), str(second_dir), "--resamples", "30", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["sentences"] == 5 and parsed["bootstrap_resamples"] == 30


def write_tsv(path, references, systems):
    """A sentences.tsv as evaluate writes it, for systems {name: (outputs, cosines)}."""
    path.mkdir()
    header = ["index", "reference"] + [f"{n}_{c}" for n in systems for c in ("output", "cosine", "token_f1", "exact")]
    lines = ["\t".join(header)]
    for i, ref in enumerate(references):
        row = [str(i), ref]
        for outputs, cosines in systems.values():
            row += [escape_tsv(outputs[i]), cosines[i], "0", "0"]
        lines.append("\t".join(row))
    (path / "sentences.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_two_systems_of_one_report_compare_by_name(tmp_path):
    folder = write_tsv(
        tmp_path / "r",
        REFS,
        {"greedy": (FIRST, ["0.5"] * 5), "budget-16": (SECOND, ["0.5", "0.6", "0.7", "0.4", "0.9"])},
    )
    result = compare_reports(read_report(folder), read_report(folder), ["greedy:budget-16"], resamples=100)
    cosine = result["systems"]["greedy:budget-16"]["cosine"]
    assert cosine["difference"] == pytest.approx(0.12)
    assert (cosine["second_better"], cosine["second_worse"]) == (3, 1)
    assert list(result["systems"]) == ["greedy:budget-16"]


def test_a_report_without_cosines_is_compared_on_the_rest_and_says_so(tmp_path):
    folder = write_tsv(tmp_path / "r", REFS, {"greedy": (FIRST, [""] * 5)})
    result = compare_reports(read_report(folder), read_report(folder), resamples=10)
    assert "cosine" not in result["systems"]["greedy"] and "chrf" in result["systems"]["greedy"]
    assert "No cosine for greedy: a report holds no re-embedding cosines" in comparison_table(result)


def test_a_byte_order_mark_and_crlf_lines_are_read_as_evaluate_writes(reports, tmp_path):
    original = (reports[0] / "sentences.tsv").read_text(encoding="utf-8")
    (tmp_path / "bom").mkdir()
    (tmp_path / "bom" / "sentences.tsv").write_bytes(b"\xef\xbb\xbf" + original.replace("\n", "\r\n").encode())
    copy, first = read_report(tmp_path / "bom"), read_report(reports[0])
    assert (copy.references, copy.outputs, list(copy.cosines)) == (first.references, first.outputs, ["greedy"])
    assert (copy.cosines["greedy"] == first.cosines["greedy"]).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.mkdir(), "holds no sentences.tsv: give a report folder that `lora-v2t evaluate` wrote"),
        (
            lambda d: (d.mkdir(), (d / "sentences.tsv").write_text("a\tb\n1\t2\n")),
            "is not a sentences.tsv of `lora-v2t evaluate`",
        ),
        (
            lambda d: write_tsv(d, REFS, {"greedy": (FIRST, ["x"] * 5)}),
            "greedy_cosine has a value that is not a number",
        ),
        (lambda d: write_tsv(d, REFS[:3], {"greedy": (FIRST, ["0.1"] * 5)}), "scores 5 sentences and .* 3: compare"),
        (
            lambda d: write_tsv(d, REFS[:2] + ["Другое.", *REFS[3:]], {"greedy": (FIRST, ["0.1"] * 5)}),
            "score different sentences \\(the first difference is at index 2\\)",
        ),
        (
            lambda d: write_tsv(d, REFS, {"budget-16": (FIRST, ["0.1"] * 5)}),
            "share no system \\(greedy against budget-16\\): name the pair with --system FIRST:SECOND",
        ),
        (lambda d: None, "does not exist: give a report folder that `lora-v2t evaluate` wrote"),
        (lambda d: write_tsv(d, [], {"greedy": ([], [])}), "holds no sentences: compare reports of at least one"),
        (
            lambda d: (d.mkdir(), (d / "sentences.tsv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")),
            "is not UTF-8 text",
        ),
        (
            lambda d: (
                write_tsv(d, REFS, {"greedy": (FIRST, ["0.1"] * 5)}),
                (d / "sentences.tsv").write_text(
                    (d / "sentences.tsv").read_text().replace("\tgreedy_cosine", "\tgreedy_other")
                ),
            ),
            "is not a sentences.tsv of `lora-v2t evaluate`",
        ),
        (
            lambda d: (
                write_tsv(d, REFS, {"greedy": (FIRST, ["0.1"] * 5)}),
                (d / "sentences.tsv").write_text((d / "sentences.tsv").read_text() + "5\tx\n"),
            ),
            "sentences.tsv, line 7: not 6 columns as its header says",
        ),
    ],
)
def test_bad_reports_are_refused_in_one_line(reports, tmp_path, capsys, make, message):
    make(tmp_path / "bad")
    assert main(["compare", str(reports[0]), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: ") and re.search(message, err)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--system", "budget-16"], "has no system 'budget-16': choose among greedy"),
        (["--system", "greedy:beams"], "has no system 'beams': choose among greedy"),
        (["--system", "greedy:"], "--system 'greedy:' is not NAME or FIRST:SECOND"),
        (["--system", ":greedy"], "--system ':greedy' is not NAME or FIRST:SECOND"),
        (["--system", "a:b:c"], "--system 'a:b:c' is not NAME or FIRST:SECOND"),
        (["--resamples", "0"], "--resamples must be >= 1 and --seed >= 0 \\(got 0 and 0\\)"),
        (["--seed", "-1"], "--resamples must be >= 1 and --seed >= 0 \\(got 1000 and -1\\)"),
    ],
)
def test_bad_options_are_refused_in_one_line(reports, capsys, extra, message):
    assert main(["compare", str(reports[0]), str(reports[1]), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err), err
