import dataclasses
import json
import os

import numpy as np
import pytest

from lora_v2t.cli import main
from lora_v2t.config import DEFAULT_BUDGET, GenerationConfig

from .conftest import first_token_vocab, only_made_of


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle", training={"steps": 7})


def test_generate_from_text(bundle, v2t, capsys):
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(bundle),
                "--text",
                "Где лодка?",
                "Кошка спит.",
                "--max-new-tokens",
                "6",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    # unasked, the command spends the default budget (the greedy text and reranked beams)
    expected = v2t.invert(["Где лодка?", "Кошка спит."], max_new_tokens=6, budget=DEFAULT_BUDGET)
    assert lines == [f"Где лодка? ==> {expected[0]}", f"Кошка спит. ==> {expected[1]}"]


def test_a_bare_rerank_prints_the_cosine_of_the_default_budgets_text(bundle, v2t, capsys):
    argv = ["generate", "--adapter", str(bundle), "--text", "Где лодка?", "--max-new-tokens", "6", "--json"]
    assert main(argv + ["--rerank"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = v2t.invert(["Где лодка?"], max_new_tokens=6, budget=DEFAULT_BUDGET, rerank=True)[0]
    assert printed["generated"] == expected.text and printed["cosine"] == round(expected.cosine, 4)
    assert main(argv + ["--rerank", "1"]) == 0  # --rerank N chooses the candidates itself: one, greedy
    assert json.loads(capsys.readouterr().out)["generated"] == v2t.invert(["Где лодка?"], max_new_tokens=6)[0]


def test_generate_from_vectors_as_json_with_rerank(bundle, v2t, tmp_path, capsys):
    vectors = v2t.encode(["Где лодка?"])
    np.save(tmp_path / "v.npy", vectors)
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(bundle),
                "--vectors",
                str(tmp_path / "v.npy"),
                "--json",
                "--num-beams",
                "3",
                "--num-return-sequences",
                "3",
                "--rerank",
                "--max-new-tokens",
                "5",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    best = v2t.generate(vectors, max_new_tokens=5, num_beams=3, num_return_sequences=3, rerank=True)[0]
    assert record["generated"] == best.text and record["cosine"] == pytest.approx(best.cosine, abs=1e-4)


def test_generate_rerank_takes_a_number_as_evaluate_does(bundle, v2t, capsys):
    """``--rerank N`` reranks N beams (as ``--num-beams N --num-return-sequences N --rerank``); the bare flag keeps
    its meaning; options that say otherwise are one line each."""
    args = ["generate", "--adapter", str(bundle), "--text", "Где лодка?", "--json", "--max-new-tokens", "5"]
    assert main([*args, "--rerank", "3"]) == 0
    record = json.loads(capsys.readouterr().out)
    best = v2t.generate(v2t.encode(["Где лодка?"]), max_new_tokens=5, num_beams=3, num_return_sequences=3, rerank=True)
    assert record["generated"] == best[0].text and record["cosine"] == pytest.approx(best[0].cosine, abs=1e-4)
    assert main([*args, "--num-beams", "4", "--rerank", "3"]) == 0  # 3 of 4 beams
    assert "cosine" in json.loads(capsys.readouterr().out)
    for extra in (
        ["--rerank"],
        ["--do-sample", "--seed", "1", "--rerank", "3"],
        ["--correct-steps", "1", "--corrector", "shift", "--rerank", "3"],
    ):
        assert main([*args, *extra]) == 0, extra  # the default budget's text; 3 samples; correction from 3 beams
        assert "cosine" in json.loads(capsys.readouterr().out)
    for extra, message in (
        (["--num-beams", "2", "--rerank", "3"], "--rerank 3 reranks 3 beams, --num-beams 2 searches fewer"),
        (["--num-return-sequences", "2", "--rerank", "3"], "--num-return-sequences asks for 2"),
        (["--rerank", "-1"], "--rerank N takes N >= 0"),
        (["--rerank", "3", "--budget", "4"], "drop --rerank"),
    ):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_generate_keeps_to_the_output_vocabulary_unless_full_vocab(v2t, tmp_path, capsys):
    token, piece = first_token_vocab(v2t, v2t.encode(["Где лодка?", "Кошка спит."]))
    v2t.set_output_vocab([token])
    try:
        bundle = v2t.save_adapter(tmp_path / "vocab-bundle")
    finally:
        v2t.set_output_vocab(None)
    args = ["generate", "--adapter", str(bundle), "--text", "Где лодка?", "Кошка спит.", "--max-new-tokens", "6"]
    args += ["--budget", "1"]  # greedy, as v2t.invert below
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ==>")[0] for line in lines] == ["Где лодка?", "Кошка спит."]
    kept = [line.split(" ==>", 1)[1].strip() for line in lines]
    assert all(only_made_of(text, piece) for text in kept) and any(kept)
    assert main(args + ["--full-vocab"]) == 0
    free = [line.split(" ==> ", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert free == v2t.invert(["Где лодка?", "Кошка спит."], max_new_tokens=6)


def test_terminal_escapes_in_texts_are_shown_escaped_not_sent_to_the_terminal(bundle, v2t, tmp_path, capsys):
    """A sentence, a bundle's field or a name holding an escape sequence is printed with its control characters
    written \\xNN (the --json lines decode to the exact texts); what goes to files is untouched."""
    hostile = "a\x1b[31mred\x07\rover\x9b2J\x7f"
    args = ["generate", "--adapter", str(bundle), "--text", hostile, "--max-new-tokens", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("a\\x1b[31mred\\x07\\rover\\x9b2J\\x7f ==> ") and not set(out) & set("\x1b\x07\r\x9b\x7f")
    assert main([*args, "--json"]) == 0
    line = capsys.readouterr().out
    assert json.loads(line)["original"] == hostile and not set(line) & set("\x1b\x07\r\x9b\x7f")
    import logging

    from lora_v2t.cli import ShownFormatter
    from lora_v2t.util.terminal import shown, shown_json

    assert shown("a\tb\nc\x00", lines=True) == "a\tb\nc\\x00" and shown("b\nc") == "b\\nc"
    assert json.loads(shown_json({"t": "\x85\x1b"})) == {"t": "\x85\x1b"}
    named = v2t.save_adapter(tmp_path / "named", training={"note": "x\x1b]0;pwned\x07"})
    assert main(["info", str(named)]) == 0
    assert "training     note: x\\x1b]0;pwned\\x07" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "no\x1b[2Jsuch")]) == 2
    err = capsys.readouterr().err
    assert "no\\x1b[2Jsuch" in err and "\x1b" not in err
    with pytest.raises(SystemExit):
        main(["generate", "--adapter", str(bundle), "--text", "a", "--bogus\x1b[2J"])
    assert "--bogus\\x1b[2J" in capsys.readouterr().err
    record = logging.LogRecord("lora_v2t", logging.INFO, __file__, 1, "    %s ==> %s", ("a\x1bb", "c\nd"), None)
    assert ShownFormatter("%(message)s").format(record) == "    a\\x1bb ==> c\nd"


def test_info_describes_the_bundle(bundle, capsys):
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "hidden 32, vocab 300" in out and "24-d" in out and "steps: 7" in out and "mlp, 1 slot(s)" in out
    assert "trained on   quantization none, compute dtype float32" in out
    assert "weights, loaded into fp32" not in out  # fp32 throughout
    assert main(["info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"] == {"steps": 7}


def test_info_says_when_a_projector_is_stored_in_bf16(v2t, tmp_path, capsys):
    small = v2t.save_adapter(tmp_path / "small", projector_dtype="bfloat16")
    assert main(["info", str(small)]) == 0
    assert "params (bf16 weights, loaded into fp32)" in capsys.readouterr().out


def test_info_and_card_of_a_bundle_that_does_not_record_its_lora_modules(bundle, capsys):
    from lora_v2t.bundle.adapter import validate_bundle
    from lora_v2t.bundle.cards import bundle_card

    path = bundle / "v2t_config.json"
    config = json.loads(path.read_text())
    del config["lora"]["target_modules"]  # an optional key: a bundle may leave it out
    path.write_text(json.dumps(config))
    assert main(["info", str(bundle)]) == 0
    assert "alpha=32 on (not recorded)," in capsys.readouterr().out
    assert "alpha=32, on (not recorded)" in str(bundle_card(validate_bundle(bundle)))


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda b, t: ["info", str(t / "nope")], "does not exist"),
        (lambda b, t: ["generate", "--adapter", str(b), "--text", "  "], "text 0 is empty"),
        (lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "missing.npy")], "does not exist"),
        (lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "wrong.npy")], "dimension 5"),
        (lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "objects.npy")], "plain numeric"),
        (lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--num-return-sequences", "2"], "num_beams"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(bundle, tmp_path, capsys, make_args, message):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), dtype=np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(make_args(bundle, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for option in ("--adapter", "--text", "--vectors", "--num-beams", "--rerank", "--quantization", "--seed"):
        assert option in out


@pytest.mark.parametrize(
    "make_args,message",
    [
        (
            lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "empty.npy")],
            "empty.npy is empty (0 bytes): save the vectors with numpy.save(path, array)",
        ),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "sentences.txt")],
            "sentences.txt is a text file, not a .npy array: give sentences with --text",
        ),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "complex.npy")],
            "complex.npy holds complex numbers (complex64); sentence vectors are real",
        ),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--do-sample", "--temperature", "0"],
            "temperature (when sampling) must be > 0, got 0.0",
        ),
        (lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--top-k", "-3"], "top_k must be >= 0, got -3"),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--top-p", "1.5"],
            "top_p must be > 0 and <= 1, got 1.5",
        ),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--repetition-penalty", "0"],
            "repetition_penalty must be > 0, got 0.0",
        ),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--device", "foo"],
            "unknown device 'foo': use cpu, cuda or cuda:N",
        ),
        (
            lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--max-new-tokens", "500"],
            "max_new_tokens 500 does not fit backbone",
        ),
        (
            lambda b, t: ["evaluate", "--adapter", str(b), "--data", str(t / "dev.txt"), "--device", "foo"],
            "unknown device 'foo'",
        ),
        (
            lambda b, t: ["evaluate", "--adapter", str(b), "--data", str(t / "dev.txt"), "--max-new-tokens", "500"],
            "max_new_tokens 500 does not fit backbone",
        ),
        (
            lambda b, t: ["evaluate", "--adapter", str(b), "--data", str(t / "dev.txt"), "--batch-size", "0"],
            "batch_size must be >= 1, got 0",
        ),
    ],
)
def test_bad_input_is_refused_before_the_models_load(bundle, tmp_path, capsys, no_model_load, make_args, message):
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "sentences.txt").write_text("Где лодка?\nКошка спит.\n", encoding="utf-8")
    np.save(tmp_path / "complex.npy", np.ones((1, 24), dtype=np.complex64))
    (tmp_path / "dev.txt").write_text("Где лодка?\n", encoding="utf-8")
    assert main(make_args(bundle, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_evaluate_out_where_nothing_can_be_written_is_refused_before_the_models_load(
    bundle, tmp_path, capsys, no_model_load
):
    """/proc passes the permission check (root may write there), yet takes no new folder: refused in one line
    before anything loads, and a writable --out is checked without leaving anything behind."""
    from lora_v2t.tasks.evaluate import check_report_dir

    (tmp_path / "dev.txt").write_text("Где лодка?\n", encoding="utf-8")
    assert main(["evaluate", "--adapter", str(bundle), "--data", str(tmp_path / "dev.txt"), "--out", "/proc/evx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the report /proc/evx: ") and len(err.splitlines()) == 1
    if os.access("/proc", os.W_OK | os.X_OK):  # as root; others are refused by the permission check
        assert "nothing can be written in /proc (" in err and err.endswith("give --out a folder on a writable disk\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert check_report_dir(tmp_path / "new" / "report") == tmp_path / "new" / "report"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_missing_backbone_folder_is_called_a_missing_folder(bundle, capsys):
    assert main(["generate", "--adapter", str(bundle), "--text", "a", "--backbone", "./no/such/base"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: backbone folder './no/such/base' does not exist: give an existing model folder, a .gguf "
        "file or a hub id (org/name)"
    )


def test_repetition_penalty_reaches_decoding(bundle, v2t, capsys):
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(bundle),
                "--text",
                "Где лодка?",
                "--max-new-tokens",
                "8",
                "--repetition-penalty",
                "0.1",
                "--budget",
                "1",
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["generated"] == v2t.invert(["Где лодка?"], max_new_tokens=8, repetition_penalty=0.1)[0]
    assert record["generated"] != v2t.invert(["Где лодка?"], max_new_tokens=8)[0]  # not the adapter's default (1.1)


def test_help_states_valid_ranges_and_where_runs_go(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--repetition-penalty",
        "(> 0; used when do_sample)",
        "(>= 0; 0 = off)",
        "(0 < top_p <= 1; 1 = off)",
        "(>= 1; 1 = greedy or sampling)",
        "cpu, cuda or cuda:N",
    ):
        assert text in out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "bootstrap 95% intervals" in out and "%%" not in out
    assert "(N >= 1; default: all)" in out and "(>= 1; default 1000)" in out and "--overwrite" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "$LORA_V2T_HOME" in out and "~/.cache/lora_v2t" in out and "<checkpoints>/runs" in out


def test_any_permission_error_is_one_line(bundle, monkeypatch, capsys):
    import lora_v2t.cli.bundles as cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/some/folder/file")

    monkeypatch.setattr(cli, "cmd_info", denied)
    assert main(["info", str(bundle)]) == 2
    assert capsys.readouterr().err == (
        "error: permission denied on /some/folder/file: fix its permissions or choose another path\n"
    )


def test_no_repeat_ngram_size_reaches_decoding(bundle, v2t, capsys):
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(bundle),
                "--text",
                "Где лодка?",
                "--max-new-tokens",
                "12",
                "--no-repeat-ngram-size",
                "1",
                "--budget",
                "1",
                "--json",
            ]
        )
        == 0
    )
    generated = json.loads(capsys.readouterr().out)["generated"]
    assert generated == v2t.invert(["Где лодка?"], max_new_tokens=12, no_repeat_ngram_size=1)[0]
    ids = v2t.tokenizer(generated, add_special_tokens=False)["input_ids"]
    free = v2t.invert(["Где лодка?"], max_new_tokens=12, no_repeat_ngram_size=0, repetition_penalty=1.0)[0]
    free_ids = v2t.tokenizer(free, add_special_tokens=False)["input_ids"]
    assert len(set(free_ids)) < len(free_ids)  # this random adapter repeats itself when let
    assert len(set(ids)) == len(ids) > 0  # with size 1, no token comes twice


def test_reports_name_a_hub_adapter_with_its_revision_and_commit(bundle, tmp_path, monkeypatch):
    from lora_v2t.cli.options import _adapter_label

    snapshot = tmp_path / "models--org--name" / "snapshots" / "3f2a9c"
    assert _adapter_label("org/name", snapshot, "v1") == "org/name@v1 (commit 3f2a9c)"
    assert _adapter_label("org/name", snapshot, None) == "org/name@main (commit 3f2a9c)"
    monkeypatch.chdir(bundle.parent)
    assert _adapter_label(bundle.name, bundle, None) == str(bundle.resolve())  # a folder: its absolute path


def test_importing_lora_v2t_prints_no_warning_about_bitsandbytes_optional_cpu_kernels():
    import os
    import subprocess
    import sys

    # on a CPU with AVX-512 BF16 this import makes bitsandbytes look for its optional kernel; elsewhere it is quiet
    done = subprocess.run(
        [sys.executable, "-c", "from lora_v2t import load_adapter"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0 and "kernels-community" not in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize(
    "logger,message,shown",
    [
        (
            "kernels._internals.hf_hub",
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' "
            "because Hugging Face Hub is in offline mode.",
            False,
        ),
        (
            "bitsandbytes.backends.cpu.ops",
            "Failed to load CPU gemm_4bit_forward from kernels-community: not cached. "
            "Please make sure you already `pip install kernels`",
            False,
        ),
        (
            "kernels._internals.hf_hub",
            "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode.",
            True,
        ),
        ("bitsandbytes.backends.cpu.ops", "some other bitsandbytes warning", True),
    ],
)
def test_only_the_optional_kernel_notices_are_dropped_on_any_cpu(caplog, logger, message, shown):
    """What bitsandbytes and kernels log, on CPUs with AVX-512 BF16, about the optional CPU kernel (emitted here
    through the same loggers, so that this holds on every CPU): those two notices are dropped, nothing else."""
    import logging

    import lora_v2t  # noqa: F401 (installs the filters)

    with caplog.at_level("WARNING", logger=logger):
        logging.getLogger(logger).warning(message)
    assert (message in caplog.text) is shown


def test_a_seed_torch_cannot_take_is_refused_before_loading(bundle, capsys, monkeypatch):
    from .conftest import refuse_calls

    refuse_calls(monkeypatch, "lora_v2t.bundle.loading.load_adapter", "the models were loaded")
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--adapter", str(bundle), "--text", "a", "--seed", str(2**64)])
    assert stop.value.code == 2 and "argument --seed: must be from 0 to 2**63 - 1" in capsys.readouterr().err


def test_a_bad_seed_in_python_is_one_line(bundle):
    from lora_v2t import V2TError, load_adapter

    v2t = load_adapter(bundle)
    for seed in (-1, 2**63, "a", 1.5):
        with pytest.raises(V2TError, match="seed must be an integer from 0 to 2\\*\\*63 - 1"):
            v2t.generate(np.zeros((1, v2t.embedding_dim), dtype=np.float32) + 0.1, seed=seed)


def test_sampling_options_without_sampling_are_warned_about(bundle, capsys, caplog):
    with caplog.at_level("WARNING", logger="lora_v2t"):
        assert (
            main(
                [
                    "generate",
                    "--adapter",
                    str(bundle),
                    "--text",
                    "a",
                    "--temperature",
                    "0.7",
                    "--top-k",
                    "5",
                    "--max-new-tokens",
                    "2",
                ]
            )
            == 0
        )
    assert "--temperature, --top-k only shape sampling: without --do-sample" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lora_v2t"):
        assert (
            main(
                [
                    "generate",
                    "--adapter",
                    str(bundle),
                    "--text",
                    "a",
                    "--temperature",
                    "0.7",
                    "--do-sample",
                    "--max-new-tokens",
                    "2",
                    "--seed",
                    "0",
                ]
            )
            == 0
        )
    assert "only shape sampling" not in caplog.text


def test_help_and_argument_errors_wait_for_no_heavy_library():
    """--help and a bad argument are answered before torch, transformers or peft are imported (seconds)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\nfrom lora_v2t.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['generate', '--help'], ['info', 'x', '--bogus']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('heavy:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft', "
        "'bitsandbytes', 'sentence_transformers'}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0 and "usage: lora-v2t" in done.stdout, done.stderr[-2000:]
    assert "unrecognized arguments: --bogus" in done.stderr
    assert done.stderr.splitlines()[-1] == "heavy: []", done.stderr[-2000:]


def test_train_refuses_a_file_as_backbone_before_embedding_the_corpus(tmp_path, monkeypatch, capsys):
    from .conftest import refuse_calls
    from .test_train import RECIPE, corpus_file

    refuse_calls(monkeypatch, "lora_v2t.train.trainer.load_encoder", "the encoder was loaded")
    refuse_calls(monkeypatch, "lora_v2t.train.trainer.prepare_data", "the corpus was embedded")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights without their folder")
    assert (
        main(
            [
                "train",
                str(RECIPE),
                f"--backbone.name={weights}",
                f"--data.train={corpus_file(tmp_path)}",
                f"--training.output_dir={tmp_path / 'runs'}",
                f"--data.cache_dir={tmp_path / 'cache'}",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == (
        f"error: backbone '{weights}' is a file; give a model folder, a .gguf file or a hub id\n"
    )


def test_the_cli_hides_only_the_known_noisy_library_warnings(bundle, capsys):
    """The warnings every command would print and that ask nothing of its user are hidden (a prefix of vectors has
    no prompt tokens for no_repeat_ngram_size; torch's unfused RMSNorm under bf16 autocast); every other warning of
    transformers and peft (and bitsandbytes' log) reaches the user. (transformers' notice to peft about
    is_gradient_checkpointing is hidden where peft wraps a model: test_adapter.)"""
    import logging
    import warnings

    noisy = [
        (
            "Passing `no_repeat_ngram_size` with `inputs_embeds` and without `input_ids` to `generate` will apply "
            "n-gram constraints only to newly generated tokens, not to the prompt.",
            UserWarning,
            "transformers.generation.utils",
        ),
        (
            "Mismatch dtype between input and weight: input dtype = c10::BFloat16, weight dtype = float, Cannot "
            "dispatch to fused implementation.",
            UserWarning,
            "torch.nn.functional",
        ),
    ]
    real = [
        ("Adapter name 'a' should not be contained in the prefix 'lora_'.", UserWarning, "peft.peft_model"),
        ("`generation_config` default values have been modified", UserWarning, "transformers.generation.utils"),
        ("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning, "transformers.modeling_utils"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["info", str(bundle)]) == 0  # sets the command line's filters
        for message, category, module in noisy + real:
            warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
    assert [str(w.message) for w in caught] == [message for message, _, _ in real]
    assert logging.getLogger("bitsandbytes").getEffectiveLevel() <= logging.WARNING


@pytest.mark.parametrize("command", [["train"], ["embed"], ["heldout", "--out", "held.txt"]])
def test_a_recipe_without_a_corpus_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys, command):
    from .conftest import refuse_calls

    refuse_calls(monkeypatch, "lora_v2t.train.pairs.load_encoder", "the encoder was loaded")
    refuse_calls(monkeypatch, "lora_v2t.train.trainer.load_encoder", "the encoder was loaded")
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "no-corpus.yaml"
    recipe.write_text("training:\n  run_name: x\n  output_dir: runs\ndata:\n  cache_dir: cache\n", encoding="utf-8")
    assert main([command[0], str(recipe), *command[1:]]) == 2
    assert capsys.readouterr().err == (
        "error: data.train is not set: name the training corpus in the recipe "
        "(data: train: FILE) or with --data.train=FILE\n"
    )
    assert not (tmp_path / "held.txt").exists()


ALL_BUT_CANDIDATES = [f.name for f in dataclasses.fields(GenerationConfig) if f.name != "num_return_sequences"]


@pytest.mark.parametrize(
    "command,names",
    [
        ("generate", None),
        ("invert", ALL_BUT_CANDIDATES),  # invert writes one text per vector
        ("evaluate", ["max_new_tokens", "batch_size", "restrict_vocab"]),
    ],
)
def test_decoding_options_are_made_from_the_generation_config_fields(capsys, command, names):
    """Each decoding option is a GenerationConfig field with the field's help, so the two cannot drift; unset,
    it is None and the adapter's default applies (evaluate's --batch-size: 32)."""
    from lora_v2t.cli import build_parser

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    given = {
        "generate": ["--text", "a"],
        "invert": ["--texts", "t.txt", "--out", "o.jsonl"],
        "evaluate": ["--data", "d.txt"],
    }[command]
    args = build_parser().parse_args([command, "--adapter", "x", *given])
    for f in dataclasses.fields(GenerationConfig):
        if names is not None and f.name not in names:
            continue
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        assert f"{flag} " in out and " ".join((f.metadata.get("flag_help") or f.metadata["help"]).split()) in out
        assert getattr(args, f.name) == (32 if (command, f.name) == ("evaluate", "batch_size") else None)
    full = build_parser().parse_args([command, "--adapter", "x", *given, "--full-vocab", "--max-new-tokens", "7"])
    assert full.restrict_vocab is False and full.max_new_tokens == 7


def test_heldout_refuses_an_out_that_names_a_folder(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    for out in (f"{tmp_path / 'new'}/", str(tmp_path / "dir")):
        assert main(["heldout", "recipes/tiny_debug.yaml", "--out", out]) == 2
        assert capsys.readouterr().err.startswith(f"error: --out {out} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"] and not any((tmp_path / "dir").iterdir())


def test_the_info_chatter_of_faiss_and_sentence_transformers_is_hidden(bundle, caplog):
    """faiss's loader says at INFO which CPU build it tried (a ModuleNotFoundError on CPUs without AVX2) and
    sentence-transformers which device it picked: every audit and encoding printed it; their warnings still show."""
    import logging

    assert main(["info", str(bundle)]) == 0
    with caplog.at_level("INFO"):
        logging.getLogger("faiss.loader").info("ModuleNotFoundError(\"No module named 'faiss.swigfaiss_avx2'\")")
        logging.getLogger("sentence_transformers.SentenceTransformer").info("No device provided, using cpu")
        logging.getLogger("faiss.loader").warning("a faiss warning")
    assert "swigfaiss" not in caplog.text and "No device" not in caplog.text and "a faiss warning" in caplog.text


@pytest.mark.parametrize("minutes", ["0", "-1", "nan", "inf"])
def test_demo_minutes_out_of_range_is_one_line_naming_the_option(minutes, capsys, no_model_load):
    assert main(["demo", "--minutes", minutes]) == 2
    assert capsys.readouterr().err == f"error: --minutes must be a positive number of minutes, got {float(minutes)}\n"


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(bundle):
    """`lora-v2t info BUNDLE | head -1`: the pipe's reader is gone before the output is written."""
    import os
    import subprocess
    import sys

    code = "import sys; from lora_v2t.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "info", str(bundle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    process.stdout.close()  # before the command has imported what it needs to write anything
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
