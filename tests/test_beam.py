"""The beam over corrections and its budget: the rule, the bookkeeping (dedup, the best never lost, decodes
counted and never over budget, seeded runs repeat) and the budget's options on every command."""

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from lora_v2t import V2TError, load_adapter
from lora_v2t.config import DEFAULT_BUDGET
from lora_v2t.model import correct as correct_module
from lora_v2t.model.beam import SOURCES, explain, least_budget, parse_sources, plan_budget
from lora_v2t.model.correct import SHIFT, Beam, CorrectionConfig, condition, correct
from lora_v2t.util.vectors import cosine_rows

from .conftest import SENTENCES, make_v2t

OPTIONS = {"max_new_tokens": 8}


@pytest.fixture()
def bundles(tmp_path, tiny_backbone_dir, tiny_encoder):
    """A hypothesizer bundle naming a corrector bundle saved beside it."""
    make_v2t(tiny_backbone_dir, tiny_encoder, seed=3, role="corrector").save_adapter(tmp_path / "corr")
    hyp = make_v2t(tiny_backbone_dir, tiny_encoder)
    hyp.meta.corrector = "../corr"
    hyp.save_adapter(tmp_path / "hyp")
    return tmp_path / "hyp", tmp_path / "corr"


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


class Spy:
    """Counts the output sequences of every generate call correction makes, by the adapter that made them."""

    def __init__(self, v2t, monkeypatch):
        self.sequences = 0
        real = type(v2t).generate

        def counting(model, *args, **kwargs):
            out = real(model, *args, **kwargs)
            self.sequences += sum(len(o) if isinstance(o, list) else 1 for o in out)
            return out

        monkeypatch.setattr(type(v2t), "generate", counting)


# ---------------------------------------------------------------------- the rule
ALL_SOURCES = [tuple(c) for n in range(1, 4) for c in combinations(SOURCES, n)]


@pytest.mark.parametrize("sources", ALL_SOURCES)
def test_every_plan_fits_its_budget_and_the_least_budget_is_exact(sources):
    least = least_budget(sources)
    with pytest.raises(
        V2TError,
        match=f"budget {least - 1} is too small for .*the least budget that works is {least} \\(--budget {least}\\)",
    ):
        plan_budget(least - 1, sources, has_corrector=True)
    for budget in range(least, 65):
        plan = plan_budget(budget, sources, has_corrector=True)
        assert plan.sources == sources and plan.budget == budget
        assert plan.start_decodes + (plan.per_candidate if plan.steps else 0) <= budget


def test_budget_one_is_greedy_and_the_rule_spends_the_rest_as_measured():
    assert plan_budget(1, has_corrector=True).sources == ()
    assert plan_budget(2, has_corrector=False).sources == ()  # nothing but greedy fits in 2 without a corrector
    assert plan_budget(2, has_corrector=True).sources == ("corrector",)
    for budget in (3, 8, 16, 64):  # without a corrector, reranked beams (see lora_v2t.model.beam)
        plan = plan_budget(budget, has_corrector=False)
        assert plan.sources == ("beams",) and plan.rerank == budget - 1 and plan.steps == 0
    for budget, beams, proposals in ((2, 0, 1), (3, 0, 2), (4, 0, 3), (5, 2, 2), (8, 5, 2), (16, 11, 4), (64, 47, 16)):
        plan = plan_budget(budget, has_corrector=True)  # with one: a step of corrector beams, after beams from 5
        shape = (plan.rerank, plan.steps, plan.width, plan.proposals, plan.min_gain)
        assert shape == (beams, 1, 1, proposals, None) and plan.start_decodes + proposals == budget, budget
        assert plan.sources == (("beams",) if beams else ()) + ("corrector",)
    assert plan_budget(16, "beams").rerank == 15
    assert (plan_budget(16, "corrector").rerank, plan_budget(16, "corrector").proposals) == (0, 15)
    assert (plan_budget(4, "beams,corrector").rerank, plan_budget(4, "beams,corrector").proposals) == (2, 1)
    mixed = plan_budget(16, "beams,shift,corrector")
    assert (mixed.rerank, mixed.width, mixed.proposals, mixed.per_candidate) == (8, 1, 1, 4)
    assert plan_budget(64, "beams,shift").width == 2


def test_a_plan_is_named_in_words_as_the_demo_prints_it():
    assert explain(plan_budget(1)) == "the greedy text"
    assert explain(plan_budget(8)) == "the greedy text and 7 beams"  # no corrector: beams
    assert explain(plan_budget(2, has_corrector=True)) == "the greedy text, then one corrector step from it"
    assert explain(plan_budget(2, has_corrector=True, sample=True)).endswith("one step of 1 corrector sample from it")
    assert explain(plan_budget(3, has_corrector=True)) == "the greedy text, then one step of 2 corrector beams from it"
    with_beams = "the greedy text and 5 beams, then one step of 2 corrector beams from the closest"
    assert explain(plan_budget(8, has_corrector=True)) == with_beams
    assert (
        explain(plan_budget(6, "beams,shift"))
        == "the greedy text and 2 beams, then up to 1 correction step (shift, keeping 1)"
    )
    mixed = plan_budget(16, "beams,shift,corrector")
    assert (
        explain(mixed) == "the greedy text and 8 beams, then up to 1 correction step (shift and corrector, keeping 1)"
    )
    wide = plan_budget(64, "beams,shift")
    assert explain(wide) == "the greedy text and 32 beams, then up to 10 correction steps (shift, keeping 2)"


@pytest.mark.parametrize("budget", [0, -3, 1.5, "x", True, None, "2.0"])
def test_a_budget_below_one_or_not_an_integer_is_refused(v2t, budget):
    with pytest.raises(V2TError, match="budget must be an integer >= 1"):
        plan_budget(budget)
    if budget is not None:
        with pytest.raises(V2TError, match="budget must be an integer >= 1"):
            v2t.generate(v2t.encode(SENTENCES[:1]), budget=budget)


@pytest.mark.parametrize(
    "sources, message",
    [
        ("beams,typo", "sources must be distinct names among beams, shift, corrector"),
        ("shift,shift", "sources must be distinct names"),
        ("", "sources must be distinct names"),
    ],
)
def test_bad_sources_are_refused(sources, message):
    with pytest.raises(V2TError, match=message):
        parse_sources(sources)


def test_sampled_proposals_need_the_corrector():
    with pytest.raises(V2TError, match="sampled proposals are the corrector's"):
        plan_budget(8, "beams,shift", sample=True)
    with pytest.raises(V2TError, match="budget 1 has no corrector step to sample: .*need a budget of 2 or more"):
        plan_budget(1, has_corrector=True, sample=True)
    assert plan_budget(2, has_corrector=True, sample=True).sample
    with pytest.raises(V2TError, match="the sources name the corrector but corrector='shift'"):
        plan_budget(8, "corrector", corrector=SHIFT)


# ---------------------------------------------------------------------- the bookkeeping
def test_the_beam_scores_each_distinct_text_once_and_keeps_the_best(v2t, monkeypatch):
    vectors = v2t.encode(SENTENCES[:2])
    encoded = []
    real = type(v2t).encode
    monkeypatch.setattr(type(v2t), "encode", lambda self, texts, **k: encoded.append(list(texts)) or real(self, texts))
    beam = Beam(v2t, vectors, width=2)
    beam.add([SENTENCES[0], SENTENCES[0], "кот", " ", SENTENCES[1]], np.array([0, 0, 0, 0, 1]))
    assert encoded == [[SENTENCES[0], "кот", SENTENCES[1]]]  # one batch, duplicates and blanks dropped
    beam.add(["кот", "лодка", SENTENCES[2]], np.array([0, 0, 0]))
    assert encoded[1] == ["лодка", SENTENCES[2]]  # "кот" was seen: not re-embedded
    assert beam.best_texts()[0] == SENTENCES[0] and beam.best_cosines()[0] == pytest.approx(1.0, abs=1e-5)
    assert len(beam.items[0]) == 2 and SENTENCES[0] in beam.items[0]
    rows, texts, _ = beam.kept(np.array([1, 0]))
    assert rows.tolist() == [0] and texts == [SENTENCES[0]]  # best first, as far as the limit allows


@pytest.mark.parametrize(
    "budget, sources",
    [(4, "beams"), (7, "beams,shift"), (9, "shift"), (11, None), (16, "beams,shift,corrector"), (5, "corrector")],
)
def test_decodes_are_counted_honestly_and_never_exceed_the_budget(bundles, monkeypatch, budget, sources):
    v2t = load_adapter(bundles[0], device="cpu")
    vectors = v2t.encode(SENTENCES[:5])
    plan = plan_budget(budget, sources, has_corrector=True)
    spy = Spy(v2t, monkeypatch)
    trace = correct(v2t, vectors, plan, **OPTIONS)
    assert trace.spent.sum() == spy.sequences  # every decode counted, and only those
    assert trace.spent.max() <= budget and trace.spent.min() >= 1
    assert sum(trace.decodes) >= trace.spent.max()


def test_the_best_text_seen_is_never_lost(bundles, monkeypatch):
    v2t = load_adapter(bundles[0], device="cpu")
    vectors = v2t.encode(SENTENCES[:6])
    proposed = [[] for _ in vectors]
    real_add = Beam.add

    def recording(self, texts, rows):
        for t, r in zip(texts, rows, strict=False):
            if t.strip():
                proposed[int(r)].append(t)
        return real_add(self, texts, rows)

    monkeypatch.setattr(Beam, "add", recording)
    plan = CorrectionConfig(steps=4, rerank=2, width=2, proposals=2, shift=True, min_gain=0.0, budget=24)
    trace = correct(v2t, vectors, plan, **OPTIONS)
    for before, after in zip(trace.cosines, trace.cosines[1:], strict=False):
        assert np.all(after >= before - 1e-6)
    for r, texts in enumerate(proposed):
        cosines = cosine_rows(v2t.encode(texts), np.repeat(vectors[r : r + 1], len(texts), axis=0))
        assert trace.cosines[-1][r] == pytest.approx(float(cosines.max()), abs=1e-5)
        assert trace.final[r] == texts[int(np.argmax(cosines))]


def test_a_budget_of_one_is_greedy_as_before(v2t):
    vectors = v2t.encode(SENTENCES[:4])
    assert v2t.generate(vectors, budget=1, **OPTIONS) == v2t.generate(vectors, **OPTIONS)


def test_a_larger_budget_only_improves_and_returns_the_cosines_with_rerank(v2t):
    vectors = v2t.encode(SENTENCES[:5])
    greedy = v2t.generate(vectors, budget=1, rerank=True, **OPTIONS)
    better = v2t.generate(vectors, budget=8, sources="beams,shift", rerank=True, **OPTIONS)
    assert all(b.cosine >= g.cosine - 1e-5 for b, g in zip(better, greedy, strict=False))
    assert [b.cosine for b in better] == pytest.approx(
        cosine_rows(v2t.encode([b.text for b in better]), vectors).tolist(), abs=1e-5
    )


def test_sampled_proposals_repeat_with_a_seed_and_warn_once_without(bundles, caplog, monkeypatch):
    v2t = load_adapter(bundles[0], device="cpu")
    vectors = v2t.encode(SENTENCES[:4])
    options = {"budget": 9, "sources": "corrector", "sample_proposals": True, **OPTIONS}
    assert v2t.generate(vectors, seed=7, **options) == v2t.generate(vectors, seed=7, **options)
    monkeypatch.setattr(correct_module, "_warned", set())
    with caplog.at_level("WARNING", logger="lora_v2t.model.correct"):
        v2t.generate(vectors, **options)
        v2t.generate(vectors, **options)
        v2t.generate(vectors, seed=1, **options)
    assert caplog.text.count("samples its proposals without a seed") == 1


def test_a_corrector_bundle_of_the_current_format_corrects_as_before(bundles):
    """The beam reads a corrector through the same input as before (v, e and v - e, then the hypothesis): one
    step of one proposal from the greedy text is the corrector's greedy decode of exactly that."""
    hyp_dir, corr_dir = bundles
    assert json.loads((corr_dir / "v2t_config.json").read_text())["format_version"] == 3
    v2t = load_adapter(hyp_dir, device="cpu")
    vectors = v2t.encode(SENTENCES[:4])
    trace = correct(v2t, vectors, plan_budget(2, "corrector"), **OPTIONS)
    greedy = v2t.generate(vectors, **OPTIONS)
    v2t.set_adapter("default-corrector")
    try:
        by_hand = v2t.generate(condition(vectors, v2t.encode(greedy)), contexts=greedy, **OPTIONS)
    finally:
        v2t.set_adapter("default")
    assert trace.greedy_texts == greedy and trace.spent.tolist() == [2] * 4
    candidates = [[g, c] for g, c in zip(greedy, by_hand, strict=False)]
    for r, texts in enumerate(candidates):
        cosines = [float(cosine_rows(v2t.encode([t]), vectors[r : r + 1])[0]) if t.strip() else -1.0 for t in texts]
        assert trace.final[r] == texts[int(np.argmax(cosines))]


def test_a_budget_with_explicit_correction_knobs_is_refused(v2t):
    with pytest.raises(V2TError, match="budget chooses the correction steps and width itself"):
        v2t.generate(v2t.encode(SENTENCES[:1]), budget=4, correct_steps=2)
    with pytest.raises(V2TError, match="give budget=N"):
        v2t.generate(v2t.encode(SENTENCES[:1]), sources="beams")
    with pytest.raises(V2TError, match="keeps one text per vector"):
        v2t.generate(v2t.encode(SENTENCES[:1]), budget=6, sources="beams", num_beams=2, num_return_sequences=2)


# ---------------------------------------------------------------------- the commands
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget", "0"], "budget must be an integer >= 1"),
        (["--budget", "1.5"], "budget must be an integer >= 1 .*got '1.5'"),
        (["--budget", "many"], "budget must be an integer >= 1"),
        (
            ["--budget", "3", "--sources", "shift"],
            "budget 3 is too small for shift: .*the least budget that works is 4",
        ),
        (["--budget", "6", "--sources", "beams,shift,corrector"], "the least budget that works is 7"),
        (["--budget", "4", "--correct-steps", "1"], "drop --correct-steps"),
        (["--sources", "beams", "--num-beams", "2"], "--num-beams chooses the candidates without one"),
        (["--sample-proposals", "--rerank", "2"], "--rerank chooses the candidates without one"),
        (["--budget", "8", "--sources", "beams", "--sample-proposals"], "sampled proposals are the corrector's"),
        (["--budget", "4", "--num-beams", "2"], "drop --num-beams, or drop --budget"),
        (["--budget", "4", "--do-sample"], "drop --do-sample, or drop --budget"),
        (
            ["--budget", "8", "--sources", "beams", "--corrector", "../corr"],
            "--corrector ../corr would not be used: budget 8 is spent on beams",
        ),
    ],
)
def test_bad_budgets_on_the_command_line_are_one_line_before_loading(bundles, extra, message, capsys, no_model_load):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    assert main(["generate", "--adapter", str(hyp_dir), "--text", "кот", *extra]) == 2
    assert __import__("re").search(message, one_error(capsys))


def test_a_budget_that_names_the_corrector_needs_one_that_exists(bundles, capsys, no_model_load):
    from lora_v2t.cli import main

    hyp_dir, corr_dir = bundles
    corr_dir.rename(corr_dir.with_name("moved"))
    for sources in ("corrector", "beams,corrector"):
        assert (
            main(["generate", "--adapter", str(hyp_dir), "--text", "кот", "--budget", "8", "--sources", sources]) == 2
        )
        assert "names its corrector '../corr'" in one_error(capsys)


def test_the_rule_spends_the_budget_without_a_named_corrector_that_is_missing(bundles, caplog):
    from lora_v2t.model.correct import corrector_at_hand

    hyp_dir, corr_dir = bundles
    assert corrector_at_hand("../corr", hyp_dir) and not corrector_at_hand(None, hyp_dir)
    corr_dir.rename(corr_dir.with_name("moved"))
    with caplog.at_level("WARNING", logger="lora_v2t.model.correct"):
        assert not corrector_at_hand("../corr", hyp_dir) and not corrector_at_hand("../corr", hyp_dir)
    warned = [r.getMessage() for r in caplog.records if "names its corrector '../corr'" in r.getMessage()]
    assert len(warned) == 1 and "budgets are spent without it" in warned[0]  # once
    v2t = load_adapter(hyp_dir, device="cpu")
    texts = v2t.generate(v2t.encode(SENTENCES[:2]), budget=8, max_new_tokens=4)
    assert len(texts) == 2 and "default-corrector" not in v2t.adapters  # beams alone: nothing to load


def test_the_commands_spend_budgets_on_beams_when_the_named_corrector_is_missing(bundles, tmp_path, caplog):
    from lora_v2t.cli import main

    hyp_dir, corr_dir = bundles
    moved = corr_dir.rename(corr_dir.with_name("moved"))
    text = ["generate", "--adapter", str(hyp_dir), "--text", "кот", "--max-new-tokens", "4"]
    with caplog.at_level("WARNING", logger="lora_v2t.model.correct"):
        assert main([*text, "--corrector", str(moved)]) == 0  # given: the named one is never looked for
        assert "names its corrector" not in caplog.text
        assert main(text) == 0 and main([*text, "--budget", "2"]) == 0  # the default budget, and 2: greedy
    assert caplog.text.count("names its corrector '../corr'") == 1
    np.save(tmp_path / "one.npy", load_adapter(hyp_dir, device="cpu").encode(SENTENCES[:1]))
    out = tmp_path / "rows.jsonl"
    invert = ["invert", "--adapter", str(hyp_dir), "--vectors", str(tmp_path / "one.npy"), "--out", str(out)]
    assert main([*invert, "--max-new-tokens", "4", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "rows.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["budget"] == 8 and meta["budget_plan"]["sources"] == ["beams"]  # what it decoded, recorded


def test_generate_evaluate_and_invert_spend_the_budget(bundles, tmp_path, capsys):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    v2t = load_adapter(hyp_dir, device="cpu")
    expected = v2t.generate(v2t.encode(SENTENCES[:3]), budget=7, sources="beams,shift", max_new_tokens=6)
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(hyp_dir),
                "--text",
                *SENTENCES[:3],
                "--budget",
                "7",
                "--sources",
                "beams,shift",
                "--max-new-tokens",
                "6",
                "--json",
            ]
        )
        == 0
    )
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["generated"] for p in printed] == expected
    data = tmp_path / "five.txt"
    data.write_text("\n".join(SENTENCES[:5]) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(hyp_dir),
                "--data",
                str(data),
                "--budget",
                "7",
                "--sources",
                "beams,shift",
                "--max-new-tokens",
                "6",
                "--resamples",
                "10",
                "--no-progress",
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["scores"]) == ["greedy", "budget-7"]
    assert summary["budget"]["budget"] == 7 and summary["budget"]["sources"] == ["beams", "shift"]
    assert 1 <= summary["budget"]["decodes_spent_mean"] <= summary["budget"]["decodes_spent_max"] <= 7
    assert summary["scores"]["budget-7"]["cosine"]["value"] >= summary["scores"]["greedy"]["cosine"]["value"]
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                str(hyp_dir),
                "--data",
                str(data),
                "--budget",
                "7",
                "--rerank",
                "4",
                "--out",
                str(tmp_path / "other"),
            ]
        )
        == 2
    )
    assert "drop --rerank" in one_error(capsys)
    out, vectors = tmp_path / "rows.jsonl", v2t.encode(SENTENCES[:5])
    np.save(tmp_path / "five.npy", vectors)
    invert = [
        "invert",
        "--adapter",
        str(hyp_dir),
        "--vectors",
        str(tmp_path / "five.npy"),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
        "--batch-size",
        "2",
    ]
    assert main(invert + ["--budget", "7", "--sources", "beams,shift"]) == 0
    rows = [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert (
        rows
        == [
            t
            for start in (0, 2, 4)  # batch by batch, as invert decoded them
            for t in v2t.generate(vectors[start : start + 2], budget=7, sources="beams,shift", max_new_tokens=6)
        ]
    )
    meta = json.loads((tmp_path / "rows.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["budget"] == 7 and meta["budget_plan"]["sources"] == ["beams", "shift"]
    capsys.readouterr()
    for other in (["--budget", "8", "--sources", "beams,shift"], []):
        assert main(invert + other) == 2
        assert "was written with another budget" in one_error(capsys)


def test_invert_outputs_begun_before_budgets_continue_at_one_decode(bundles, tmp_path, capsys):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    data = tmp_path / "four.txt"
    data.write_text("\n".join(SENTENCES[:4]) + "\n", encoding="utf-8")
    out = tmp_path / "rows.jsonl"
    base = [
        "invert",
        "--adapter",
        str(hyp_dir),
        "--texts",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
        "--batch-size",
        "2",
    ]
    assert main(base + ["--budget", "1"]) == 0
    meta_file = tmp_path / "rows.jsonl.meta.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    assert meta["budget"] == 1 and "budget_plan" not in meta
    del meta["budget"]  # as written before budgets
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    assert main(base) == 0  # the same command again, without --budget: it continues as the file was begun
    assert out.read_text(encoding="utf-8").splitlines() == lines
    assert main(base[:-2] + ["--budget", "5", "--sources", "beams"]) == 2
    assert "another budget (1, now 5)" in one_error(capsys)


def test_an_encoder_that_cannot_embed_text_decodes_greedily_unless_a_budget_is_asked(
    bundles, tmp_path, capsys, no_model_load
):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    config = json.loads((hyp_dir / "v2t_config.json").read_text(encoding="utf-8"))
    config["encoder"]["spec"] = f"precomputed:{config['encoder']['dim']}"
    (hyp_dir / "v2t_config.json").write_text(json.dumps(config), encoding="utf-8")
    np.save(tmp_path / "v.npy", np.ones((1, config["encoder"]["dim"]), dtype=np.float32))
    argv = [
        "invert",
        "--adapter",
        str(hyp_dir),
        "--vectors",
        str(tmp_path / "v.npy"),
        "--out",
        str(tmp_path / "o.jsonl"),
    ]
    assert main(argv + ["--budget", "4"]) == 2
    assert "cannot embed text: give --encoder SPEC (the encoder that made the vectors) or --budget 1" in one_error(
        capsys
    )
    with pytest.raises(AssertionError, match="the models were loaded"):  # unasked: greedy, and it loads
        main(argv)
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["budget"] == 1


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"budget": "8"}, "records budget '8', not a number of decodes >= 1"),
        ({"budget": 0}, "records budget 0, not a number"),
        ([1, 2], "is not the meta file `lora-v2t invert` writes"),
    ],
)
def test_a_damaged_invert_meta_file_is_refused_in_one_line(bundles, tmp_path, capsys, no_model_load, meta, message):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    (tmp_path / "s.txt").write_text("кот\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    out.write_text("", encoding="utf-8")
    (tmp_path / "o.jsonl.meta.json").write_text(json.dumps(meta), encoding="utf-8")
    assert main(["invert", "--adapter", str(hyp_dir), "--texts", str(tmp_path / "s.txt"), "--out", str(out)]) == 2
    assert message in one_error(capsys)
    assert out.read_text(encoding="utf-8") == ""  # left as it was


def test_invert_spends_the_default_budget_on_new_outputs_unless_the_candidates_are_chosen(bundles, tmp_path):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    data = tmp_path / "two.txt"
    data.write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
    base = ["invert", "--adapter", str(hyp_dir), "--texts", str(data), "--max-new-tokens", "4", "--no-progress"]
    for name, extra, budget in (
        ("plain", [], DEFAULT_BUDGET),
        ("sampled", ["--do-sample", "--seed", "1"], 1),  # sampling chooses the candidates: no budget
        ("beams", ["--num-beams", "2"], 1),
        ("asked", ["--budget", "3"], 3),
    ):
        out = tmp_path / f"{name}.jsonl"
        assert main(base + ["--out", str(out), *extra]) == 0
        meta = json.loads(out.with_name(out.name + ".meta.json").read_text(encoding="utf-8"))
        assert meta["budget"] == budget, name
        assert ("budget_plan" in meta) == (budget > 1), name


def test_audit_passes_its_budget_to_the_inversion(bundles, tmp_path, capsys):
    from lora_v2t.cli import main

    hyp_dir, _ = bundles
    v2t = load_adapter(hyp_dir, device="cpu")
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, v2t.encode(SENTENCES[:4]))
    out = tmp_path / "audit"
    base = [
        "audit",
        str(vectors),
        "--adapter",
        str(hyp_dir),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
        "--batch-size",
        "2",
    ]
    assert main(base + ["--budget", "many"]) == 2
    assert "budget must be an integer >= 1" in one_error(capsys) and not out.exists()
    assert main(base + ["--budget", "5"]) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = []
    for start in (0, 2):  # batch by batch, as the audit inverted them
        expected += v2t.generate(np.load(vectors)[start : start + 2], budget=5, max_new_tokens=6)
    assert [r["reconstruction"] for r in rows] == expected
    assert json.loads((out / "audit.json").read_text(encoding="utf-8"))["decoding"]["budget"] == 5
    assert json.loads((out / "inverted.jsonl.meta.json").read_text(encoding="utf-8"))["budget"] == 5
    capsys.readouterr()
    assert main(base) == 2
    assert "holds an audit with another decoding" in one_error(capsys)


# ---------------------------------------------------------------------- the shipped adapters
ADAPTERS = Path(__file__).resolve().parents[1] / "checkpoints" / "adapters"
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "ru" / "dev_conversational.txt"


@pytest.mark.slow
@pytest.mark.skipif(not DEV.is_file(), reason=f"no {DEV} (the project's shared Russian data)")
def test_on_the_shipped_adapters_a_budget_of_8_reaches_at_least_greedy():
    sentences = DEV.read_text(encoding="utf-8").splitlines()[:8]
    v2t = load_adapter(ADAPTERS / "use-gemma270m-ru-v2", device="cpu")
    vectors = v2t.encode(sentences)
    greedy = cosine_rows(v2t.encode(v2t.generate(vectors)), vectors)
    for sources in (None, "beams,shift,corrector"):  # the rule's choice, and the mixed beam with the corrector
        trace = correct(v2t, vectors, plan_budget(8, sources, has_corrector=True))
        assert trace.spent.max() <= 8 and trace.greedy_cosines == pytest.approx(greedy, abs=1e-4)
        assert trace.cosines[-1].mean() >= greedy.mean()
    assert "default-corrector" in v2t.adapters
