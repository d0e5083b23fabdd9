"""Correction: the corrector's inputs, the loop, the pairing of hypothesizer and corrector, and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from lora_v2t import V2TError, load_adapter
from lora_v2t.model.correct import SHIFT, CorrectionConfig, Trace, condition, correct
from lora_v2t.model.generate import reembed_cosines
from lora_v2t.util.vectors import cosine_rows

from .conftest import SENTENCES, make_v2t
from .test_train import RECIPE


@pytest.fixture()
def corrector(tiny_backbone_dir, tiny_encoder):
    return make_v2t(tiny_backbone_dir, tiny_encoder, seed=3, role="corrector")


@pytest.fixture()
def bundles(tmp_path, tiny_backbone_dir, tiny_encoder, corrector):
    """A hypothesizer bundle naming a corrector bundle saved beside it."""
    corrector.save_adapter(tmp_path / "corr")
    hyp = make_v2t(tiny_backbone_dir, tiny_encoder)
    hyp.meta.corrector = "../corr"
    hyp.save_adapter(tmp_path / "hyp")
    return tmp_path / "hyp", tmp_path / "corr"


def edited_copy(bundle, folder, section, key, value):
    """A copy of ``bundle`` whose v2t_config.json says ``section.key = value``."""
    shutil.copytree(bundle, folder)
    config = json.loads((folder / "v2t_config.json").read_text())
    config[section][key] = value
    (folder / "v2t_config.json").write_text(json.dumps(config))
    return folder


def conditions(v2t, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, v2t.embedding_dim, generator=g).numpy()
    e = torch.randn(n, v2t.embedding_dim, generator=g).numpy()
    return condition(v, e)


def test_condition_is_target_hypothesis_and_difference():
    v, e = np.ones((2, 3), np.float32), np.full((2, 3), 0.25, np.float32)
    c = condition(v, e)
    assert c.shape == (2, 9)
    assert np.allclose(c[:, :3], v) and np.allclose(c[:, 3:6], e) and np.allclose(c[:, 6:], 0.75)
    with pytest.raises(V2TError, match="differ in shape"):
        condition(v, e[:1])


def test_a_corrector_reads_three_vectors_and_learns_only_the_target_tokens(corrector):
    assert corrector.role == "corrector"
    assert corrector.projector.embedding_dim == 3 * corrector.embedding_dim
    batch = corrector.tokenize(["кот спит", "где лодка"], 16, contexts=["кот", "лодка где она сейчас"])
    ids, mask, learned = batch["input_ids"], batch["attention_mask"], batch["label_mask"]
    eos = corrector.tokenizer.eos_token_id
    for row in range(2):
        context_len = int(mask[row].sum() - learned[row].sum())
        assert ids[row, context_len - 1] == eos  # the separator closes the context
        assert learned[row, :context_len].sum() == 0 and learned[row, context_len:].sum() > 0
    inputs = corrector.build_inputs(conditions(corrector, 2), ids, mask, learned)
    k = corrector.projector.prefix_length
    labelled = inputs["labels"][:, k:] != -100
    assert torch.equal(labelled, (learned * mask).bool())
    loss = corrector(conditions(corrector, 2), ids, mask, label_mask=learned).loss
    assert torch.isfinite(loss)


def test_batched_left_padded_correction_equals_one_row_at_a_time(corrector):
    contexts = ["кот", "лодка где она сейчас и почему", "сегодня"]
    cond = conditions(corrector, 3)
    batched = corrector.generate(cond, contexts=contexts, max_new_tokens=10, batch_size=3)
    single = [corrector.generate(cond[i : i + 1], contexts=contexts[i : i + 1], max_new_tokens=10)[0] for i in range(3)]
    assert batched == single
    assert len(set(batched)) > 1


def test_shift_correction_only_improves_and_counts_its_decodes(v2t):
    vectors = v2t.encode(SENTENCES[:6])
    trace = correct(v2t, vectors, CorrectionConfig(steps=3, corrector=SHIFT, min_gain=0.0), max_new_tokens=12)
    assert len(trace.texts) == len(trace.cosines) == len(trace.seconds) >= 2
    assert trace.decodes[0] == 1 and set(trace.decodes[1:]) == {3}
    for before, after in zip(trace.cosines, trace.cosines[1:], strict=False):  # strict=False: consecutive steps
        assert np.all(after >= before - 1e-6)
    final = [t for t in trace.final if t.strip()]
    assert final  # the tiny model writes something
    rows = [i for i, t in enumerate(trace.final) if t.strip()]
    assert np.allclose(cosine_rows(v2t.encode(final), vectors[rows]), trace.cosines[-1][rows], atol=1e-5)


def test_correction_stops_early_when_the_cosine_stops_rising(v2t):
    vectors = v2t.encode(SENTENCES[:3])
    trace = correct(v2t, vectors, CorrectionConfig(steps=5, corrector=SHIFT, min_gain=10.0), max_new_tokens=8)
    assert len(trace.texts) == 2  # the hypothesis and one step that gained less than 10


def test_a_hypothesizer_finds_the_corrector_it_names_on_the_same_base(bundles):
    hyp_dir, _ = bundles
    v2t = load_adapter(hyp_dir, device="cpu")
    base = v2t.base_model
    vectors = v2t.encode(SENTENCES[:4])
    out = v2t.generate(vectors, correct_steps=2, max_new_tokens=10)
    assert len(out) == 4 and all(isinstance(t, str) for t in out)
    assert "default-corrector" in v2t.adapters and v2t.active_adapter == "default"
    assert v2t.base_model is base  # the corrector went onto the loaded base
    plain = v2t.generate(vectors, max_new_tokens=10)
    trace = correct(v2t, vectors, CorrectionConfig(steps=2), max_new_tokens=10)
    assert trace.texts[0] == plain


def test_a_corrector_bundle_records_its_role_and_loads_only_as_a_corrector(bundles):
    hyp_dir, corr_dir = bundles
    config = json.loads((corr_dir / "v2t_config.json").read_text())
    assert config["role"] == "corrector" and config["format_version"] == 3
    hyp_config = json.loads((hyp_dir / "v2t_config.json").read_text())
    assert hyp_config["corrector"] == "../corr"
    assert hyp_config["format_version"] == 2  # a hypothesizer stays readable by lora_v2t versions before correctors
    alone = load_adapter(corr_dir, device="cpu")
    with pytest.raises(V2TError, match="is a corrector: .*load a hypothesizer"):
        alone.generate(np.zeros((1, alone.embedding_dim), np.float32))


def test_a_hypothesizer_is_refused_as_a_corrector(bundles, tmp_path):
    hyp_dir, _ = bundles
    v2t = load_adapter(hyp_dir, device="cpu")
    with pytest.raises(V2TError, match="is a hypothesizer, not a corrector"):
        v2t.generate(v2t.encode(SENTENCES[:1]), correct_steps=1, corrector=str(hyp_dir))


def test_a_corrector_for_another_encoder_is_refused(bundles, tmp_path):
    hyp_dir, corr_dir = bundles
    other = edited_copy(corr_dir, tmp_path / "other", "encoder", "spec", "sentence-transformers/LaBSE")
    v2t = load_adapter(hyp_dir, device="cpu")
    with pytest.raises(V2TError, match="trained for encoder 'sentence-transformers/LaBSE'"):
        v2t.generate(v2t.encode(SENTENCES[:1]), correct_steps=1, corrector=str(other))
    assert v2t.adapters == ["default"]  # nothing half-loaded


def test_correction_without_a_corrector_says_what_to_load(v2t):
    with pytest.raises(V2TError, match="names no corrector: pass corrector=.*'shift'"):
        v2t.generate(v2t.encode(SENTENCES[:1]), correct_steps=1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"correct_steps": -1}, "correct_steps must be an integer >= 0"),
        ({"correct_steps": 1.5}, "correct_steps must be an integer"),
        ({"correct_steps": 1, "corrector": SHIFT, "correct_width": 0}, "correct_width must be an integer >= 1"),
        (
            {"correct_steps": 1, "corrector": SHIFT, "num_beams": 3, "num_return_sequences": 3},
            r"or rerank the candidates first \(rerank=True",
        ),
        (
            {"correct_steps": 1, "corrector": SHIFT, "rerank": True, "num_beams": 4, "num_return_sequences": 2},
            "give num_beams=2",
        ),
        (
            {"correct_steps": 1, "corrector": SHIFT, "rerank": True, "do_sample": True, "num_return_sequences": 2},
            "drop do_sample",
        ),
    ],
)
def test_bad_correction_options_are_refused(v2t, options, message):
    with pytest.raises(V2TError, match=message):
        v2t.generate(v2t.encode(SENTENCES[:1]), **options)


# ---------------------------------------------------------------------- training a corrector
def tiny_run(tmp_path, backbone_dir, encoder_dir):
    """A corpus of 40 distinct sentences and the recipe overrides of a 4-step run on the tiny models."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{s} {i}" for i in range(4) for s in SENTENCES) + "\n", encoding="utf-8")
    return corpus, [
        f"--backbone.name={backbone_dir}",
        f"--encoder.spec={encoder_dir}",
        f"--training.output_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.train={corpus}",
        "--data.val_size=4",
        "--training.max_steps=4",
        "--training.eval_every=4",
        "--training.save_every=4",
    ]


def test_heldout_then_invert_then_a_trained_corrector_that_corrects(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir, capsys
):
    from lora_v2t.cli import main
    from lora_v2t.config import load_config
    from lora_v2t.train.pairs import unseen_sentences
    from lora_v2t.train.trainer import train

    corpus, common = tiny_run(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    sample = ["--data.max_sentences=12"]
    hypothesizer = train(load_config(RECIPE, common + sample + ["--training.run_name=hyp"]), show_progress=False)
    held = tmp_path / "held.txt"
    assert main(["heldout", str(RECIPE), "--out", str(held), *common, *sample]) == 0
    unseen = held.read_text(encoding="utf-8").splitlines()
    cfg = load_config(RECIPE, common + sample)
    assert unseen == unseen_sentences(cfg) and len(unseen) > 8
    trained_on = json.loads((hypothesizer / "v2t_config.json").read_text())
    assert trained_on["role"] == "hypothesizer"
    assert main(["heldout", str(RECIPE), "--out", str(held), *common, *sample]) == 2  # never overwritten
    hyps = tmp_path / "hyps.jsonl"
    assert (
        main(
            [
                "invert",
                "--adapter",
                str(hypothesizer),
                "--texts",
                str(held),
                "--out",
                str(hyps),
                "--max-new-tokens",
                "8",
                "--no-progress",
                "--budget",
                "1",
            ]
        )
        == 0
    )
    corrector = train(
        load_config(
            RECIPE,
            common
            + [
                f"--data.train={held}",
                f"--data.hypotheses={hyps}",
                "--training.role=corrector",
                "--training.run_name=corr",
            ],
        ),
        show_progress=False,
    )
    config = json.loads((corrector / "v2t_config.json").read_text())
    assert config["role"] == "corrector" and config["projector"]["embedding_dim"] == 3 * config["encoder"]["dim"]
    v2t = load_adapter(hypothesizer, device="cpu")
    out = v2t.generate(v2t.encode(unseen[:3]), correct_steps=2, corrector=str(corrector), max_new_tokens=8)
    assert len(out) == 3
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(hypothesizer),
                "--text",
                unseen[0],
                "--correct-steps",
                "1",
                "--corrector",
                str(corrector),
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    assert "==>" in capsys.readouterr().out


def test_a_corrector_recipe_without_hypotheses_is_refused(tmp_path, tiny_backbone_dir, tiny_encoder_dir):
    from lora_v2t.config import load_config
    from lora_v2t.train.trainer import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    cfg = load_config(
        RECIPE,
        [
            f"--backbone.name={tiny_backbone_dir}",
            f"--encoder.spec={tiny_encoder_dir}",
            f"--training.output_dir={tmp_path / 'runs'}",
            f"--data.train={corpus}",
            "--training.role=corrector",
        ],
    )
    with pytest.raises(V2TError, match="needs data.hypotheses"):
        train(cfg, show_progress=False)


def test_the_command_line_checks_correction_before_loading_models(tmp_path, bundles, no_model_load, capsys):
    from lora_v2t.cli import main

    hyp_dir, corr_dir = bundles
    base = ["generate", "--adapter", str(hyp_dir), "--text", "кот"]
    assert main(base + ["--correct-steps", "-1"]) == 2
    assert "correct_steps must be an integer >= 0" in capsys.readouterr().err
    assert main(base + ["--correct-steps", "1", "--corrector", str(hyp_dir)]) == 2
    assert "is a hypothesizer, not a corrector" in capsys.readouterr().err
    (hyp_dir / "v2t_config.json").write_text((hyp_dir / "v2t_config.json").read_text().replace('"../corr"', "null"))
    assert (
        main(base + ["--correct-steps", "1", "--corrector", "shift", "--num-beams", "2", "--num-return-sequences", "2"])
        == 2
    )
    assert "or rerank the candidates first" in capsys.readouterr().err
    assert (
        main(
            base
            + [
                "--correct-steps",
                "1",
                "--corrector",
                "shift",
                "--rerank",
                "--num-beams",
                "3",
                "--num-return-sequences",
                "2",
            ]
        )
        == 2
    )
    assert "give num_beams=2 (--num-beams 2)" in capsys.readouterr().err
    assert main(base + ["--correct-steps", "1"]) == 2
    assert "names no corrector" in capsys.readouterr().err


def test_correction_refuses_several_outputs_per_vector(v2t):
    with pytest.raises(V2TError, match="keeps one text per vector"):
        v2t.generate(v2t.encode(SENTENCES[:1]), correct_steps=1, corrector=SHIFT, num_beams=2, num_return_sequences=2)


def test_a_named_corrector_missing_beside_its_hypothesizer_names_the_bundle(bundles):
    hyp_dir, corr_dir = bundles
    shutil.rmtree(corr_dir)
    v2t = load_adapter(hyp_dir, device="cpu")
    with pytest.raises(V2TError, match=f"adapter {hyp_dir} names its corrector '../corr'"):
        v2t.generate(v2t.encode(SENTENCES[:1]), correct_steps=1)


def test_an_explicit_corrector_is_loaded_once_and_replaced_when_another_is_asked(bundles, tmp_path):
    hyp_dir, corr_dir = bundles
    other = tmp_path / "corr2"
    shutil.copytree(corr_dir, other)
    v2t = load_adapter(hyp_dir, device="cpu")
    vectors = v2t.encode(SENTENCES[:2])
    v2t.generate(vectors, correct_steps=1, corrector=str(other), max_new_tokens=6)
    first = v2t.projectors["default-corrector"]
    v2t.generate(vectors, correct_steps=1, corrector=str(other), max_new_tokens=6)
    assert v2t.projectors["default-corrector"] is first  # not reloaded
    v2t.generate(vectors, correct_steps=1, max_new_tokens=6)  # the one the hypothesizer names
    assert v2t.adapter_meta["default-corrector"].source == str(corr_dir.resolve())


def test_evaluate_reports_every_correction_step_with_its_cost(v2t, tmp_path):
    from lora_v2t.tasks.evalfile import EvalData
    from lora_v2t.tasks.evaluate import evaluate, markdown_table

    data = EvalData(references=SENTENCES[:5], sources=SENTENCES[:5], name="five")
    summary = evaluate(
        v2t,
        data,
        tmp_path / "report",
        rerank=0,
        resamples=20,
        show_progress=False,
        max_new_tokens=10,
        correction=CorrectionConfig(steps=2, corrector=SHIFT, min_gain=0.0),
    )
    steps = summary["correction"]["steps_run"]
    assert steps >= 1 and list(summary["scores"]) == ["greedy"] + [f"corrected-{s}" for s in range(1, steps + 1)]
    assert set(summary["scores"]["corrected-1"]) >= {"chrf", "bleu", "cosine", "exact_match"}
    assert len(summary["correction"]["seconds_per_step"]) == steps + 1
    assert summary["scores"]["corrected-1"]["cosine"]["value"] >= summary["scores"]["greedy"]["cosine"]["value"] - 1e-6
    header = (tmp_path / "report" / "sentences.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert len(header) == len(set(header)) and "corrected-1_output" in header
    assert "Correction with `shift`" in markdown_table(summary)


def test_evaluate_with_reranking_corrects_from_the_reranked_candidates(v2t, tmp_path):
    from lora_v2t.tasks.evalfile import EvalData
    from lora_v2t.tasks.evaluate import evaluate

    data = EvalData(references=SENTENCES[:5], sources=SENTENCES[:5], name="five")
    plain = evaluate(v2t, data, tmp_path / "plain", rerank=3, resamples=20, show_progress=False, max_new_tokens=10)
    summary = evaluate(
        v2t,
        data,
        tmp_path / "report",
        rerank=3,
        resamples=20,
        show_progress=False,
        max_new_tokens=10,
        correction=CorrectionConfig(steps=2, corrector=SHIFT, min_gain=0.0),
    )
    steps = summary["correction"]["steps_run"]
    reranked = "reranked (greedy + 3 beams)"
    assert list(summary["scores"]) == ["greedy", reranked] + [f"reranked+corrected-{s}" for s in range(1, steps + 1)]
    assert summary["correction"]["starts_from"] == "reranked"
    assert summary["correction"]["decodes_per_vector_per_step"][0] == 4  # greedy + 3 beams
    for name in ("greedy", reranked):  # the same systems as without correction
        for metric, value in summary["scores"][name].items():
            assert value["value"] == pytest.approx(plain["scores"][name][metric]["value"], abs=1e-3), (name, metric)
    cosine = {name: s["cosine"]["value"] for name, s in summary["scores"].items()}
    assert cosine["reranked+corrected-1"] >= cosine[reranked] - 1e-6 and cosine[reranked] >= cosine["greedy"] - 1e-6
    header = (tmp_path / "report" / "sentences.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert len(header) == len(set(header)) and "reranked+corrected-1_output" in header


def test_generate_with_reranked_beams_corrects_from_the_best_of_them(v2t):
    vectors = v2t.encode(SENTENCES[:4])
    beams = {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 10}
    reranked = v2t.generate(vectors, rerank=True, **beams)
    corrected = v2t.generate(vectors, rerank=True, correct_steps=1, corrector=SHIFT, **beams)
    for before, after in zip(reranked, corrected, strict=True):  # the beams were candidates, and correction only adds
        assert after.cosine >= before.cosine - 1e-5
    greedy = v2t.generate(vectors, max_new_tokens=10)  # competes too
    best = np.maximum(reembed_cosines(v2t, greedy, vectors, empty=-1.0), [r.cosine for r in reranked])
    assert np.all(np.array([c.cosine for c in corrected]) >= best - 1e-5)


def test_reranking_one_sequence_keeps_the_beam_width_for_every_decode():
    from lora_v2t.model.correct import reranked_start

    options = {"num_beams": 3, "num_return_sequences": 1, "max_new_tokens": 5}
    assert reranked_start(options, rerank=True) == 0 and options == {"num_beams": 3, "max_new_tokens": 5}
    options = {"num_beams": 3, "num_return_sequences": 3}
    assert reranked_start(options, rerank=True) == 3 and options == {}


def test_a_wider_correction_from_reranked_beams_corrects_each_kept_candidate(v2t):
    vectors = v2t.encode(SENTENCES[:3])
    trace = correct(
        v2t, vectors, CorrectionConfig(steps=1, corrector=SHIFT, rerank=3, width=2, min_gain=0.0), max_new_tokens=10
    )
    assert trace.decodes == [4, 6]  # greedy + 3 beams; 3 shifts for each of 2 kept candidates
    assert np.all(trace.cosines[0] >= trace.greedy_cosines - 1e-6)
    assert np.all(trace.cosines[1] >= trace.cosines[0] - 1e-6)


def test_evaluate_scores_correction_steps_with_the_cosines_correction_computed(v2t, tmp_path, monkeypatch):
    from lora_v2t.model.correct import correct
    from lora_v2t.model.generate import reembed_cosines
    from lora_v2t.tasks.evalfile import EvalData
    from lora_v2t.tasks.evaluate import evaluate

    cfg = CorrectionConfig(steps=2, corrector=SHIFT, min_gain=0.0)
    vectors = v2t.encode(SENTENCES[:5])
    encoded = []
    real_encode = type(v2t).encode
    monkeypatch.setattr(type(v2t), "encode", lambda self, *a, **k: encoded.append(1) or real_encode(self, *a, **k))
    trace = correct(v2t, vectors, cfg, max_new_tokens=10)
    by_correction = len(encoded)
    encoded.clear()
    evaluate(
        v2t,
        EvalData(references=SENTENCES[:5], sources=SENTENCES[:5], name="five"),
        tmp_path / "report",
        rerank=0,
        resamples=20,
        show_progress=False,
        max_new_tokens=10,
        correction=cfg,
    )
    assert len(encoded) == 1 + by_correction  # the sources, then only what correction itself re-embedded
    rows = [
        line.split("\t") for line in (tmp_path / "report" / "sentences.tsv").read_text(encoding="utf-8").splitlines()
    ]
    column = rows[0].index("corrected-1_cosine")
    fresh = reembed_cosines(v2t, trace.texts[1], vectors, empty=0.0)
    assert [float(r[column]) for r in rows[1:]] == pytest.approx(fresh.tolist(), abs=1e-3)


def test_corrector_data_must_be_the_hypotheses_of_its_sentences_and_unseen(
    tmp_path, tiny_backbone_dir, tiny_encoder_dir
):
    from lora_v2t.cli import main
    from lora_v2t.config import load_config
    from lora_v2t.train.pairs import corrector_data
    from lora_v2t.train.trainer import train

    corpus, common = tiny_run(tmp_path, tiny_backbone_dir, tiny_encoder_dir)
    common.append("--data.max_sentences=12")
    hypothesizer = train(load_config(RECIPE, common), show_progress=False)
    seen = tmp_path / "seen.txt"  # the corpus itself: the hypothesizer trained on some of it
    seen.write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    hyps = tmp_path / "hyps.jsonl"
    assert (
        main(
            [
                "invert",
                "--adapter",
                str(hypothesizer),
                "--texts",
                str(seen),
                "--out",
                str(hyps),
                "--max-new-tokens",
                "4",
                "--no-progress",
                "--budget",
                "1",
            ]
        )
        == 0
    )
    corrector_cfg = common + [f"--data.hypotheses={hyps}", "--training.role=corrector", "--data.max_sentences=null"]
    with pytest.raises(V2TError, match="were in hypothesizer .*'s training or validation set"):
        corrector_data(load_config(RECIPE, corrector_cfg + [f"--data.train={seen}"]), None, show_progress=False)
    other = tmp_path / "other.txt"
    other.write_text(seen.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(V2TError, match="holds hypotheses for .*seen.txt .* not for data.train .*other.txt"):
        corrector_data(load_config(RECIPE, corrector_cfg + [f"--data.train={other}"]), None, show_progress=False)


def test_the_command_line_refuses_a_corrector_as_the_adapter_before_loading(bundles, no_model_load, capsys):
    from lora_v2t.cli import main

    _, corr_dir = bundles
    assert main(["generate", "--adapter", str(corr_dir), "--text", "кот"]) == 2
    assert "is a corrector" in capsys.readouterr().err
    assert (
        main(
            [
                "invert",
                "--adapter",
                str(corr_dir),
                "--texts",
                str(corr_dir / "README.md"),
                "--out",
                str(corr_dir.parent / "x.jsonl"),
            ]
        )
        == 2
    )
    assert "is a corrector" in capsys.readouterr().err


def test_corrector_options_without_steps_are_refused(bundles, no_model_load, capsys):
    from lora_v2t.cli import main

    hyp_dir, corr_dir = bundles
    sources = ["--sources", "beams", "--corrector", str(corr_dir)]  # the default budget alone would use it
    assert main(["generate", "--adapter", str(hyp_dir), "--text", "кот", *sources]) == 2
    assert "would not be used: budget 8 is spent on beams" in capsys.readouterr().err
    assert main(["generate", "--adapter", str(hyp_dir), "--text", "кот", "--correct-width", "2"]) == 2
    assert "give --correct-steps N" in capsys.readouterr().err


def test_a_corrector_for_another_base_is_refused_before_loading(bundles, tmp_path, no_model_load, capsys):
    from lora_v2t.cli import main

    hyp_dir, corr_dir = bundles
    other = edited_copy(corr_dir, tmp_path / "other-base", "backbone", "model_type", "llama")
    assert (
        main(
            ["generate", "--adapter", str(hyp_dir), "--text", "кот", "--correct-steps", "1", "--corrector", str(other)]
        )
        == 2
    )
    assert "was trained on base" in capsys.readouterr().err


def test_shift_correction_warns_only_about_the_vectors_the_user_gave(v2t, caplog):
    """The shifted vectors v + a (v - e) that correction decodes are not unit length by design: only the
    caller's own vectors are checked, once per call."""
    vectors = v2t.encode(SENTENCES[:3])  # unit length, as the adapter's encoder makes them
    options = {"correct_steps": 2, "corrector": SHIFT, "max_new_tokens": 6}
    with caplog.at_level("WARNING", logger="lora_v2t.model.generate"):
        v2t.generate(vectors, **options)
        v2t.generate(vectors, rerank=True, num_beams=2, num_return_sequences=2, **options)
    assert "not unit length" not in caplog.text
    scaled = vectors.copy()
    scaled[1] *= 10
    with caplog.at_level("WARNING", logger="lora_v2t.model.generate"):
        v2t.generate(scaled, rerank=True, num_beams=2, num_return_sequences=2, **options)
    assert caplog.text.count("not unit length") == 1
    assert "1 of 3 vectors are not unit length (rows [1]..., norms 1 to 10)" in caplog.text


def test_a_traces_texts_score_an_empty_text_zero_as_re_embedding_scores_it():
    trace = Trace(
        texts=[["a", ""], ["b", "c"]],
        cosines=[np.array([0.5, -1.0]), np.array([0.6, 0.7])],
        greedy_texts=["", "d"],
        greedy_cosines=np.array([-1.0, 0.4], dtype=np.float32),
    )
    assert trace.greedy() == (["", "d"], pytest.approx([0.0, 0.4]))
    assert trace.step(0) == (["a", ""], pytest.approx([0.5, 0.0]))
    assert trace.step() == (["b", "c"], pytest.approx([0.6, 0.7])) and trace.final == ["b", "c"]
