import json

import numpy as np
import pytest

from lora_v2t.cli import main

from .conftest import first_token_vocab, only_made_of


@pytest.fixture()
def bundle(v2t, tmp_path):
    return v2t.save_adapter(tmp_path / "bundle", training={"steps": 7})


def test_generate_from_text(bundle, v2t, capsys):
    assert main(["generate", "--adapter", str(bundle), "--text", "Где лодка?", "Кошка спит.",
                 "--max-new-tokens", "6", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = v2t.invert(["Где лодка?", "Кошка спит."], max_new_tokens=6)
    assert lines == [f"Где лодка? ==> {expected[0]}", f"Кошка спит. ==> {expected[1]}"]


def test_generate_from_vectors_as_json_with_rerank(bundle, v2t, tmp_path, capsys):
    vectors = v2t.encode(["Где лодка?"])
    np.save(tmp_path / "v.npy", vectors)
    assert main(["generate", "--adapter", str(bundle), "--vectors", str(tmp_path / "v.npy"), "--json",
                 "--num-beams", "3", "--num-return-sequences", "3", "--rerank", "--max-new-tokens", "5"]) == 0
    record = json.loads(capsys.readouterr().out)
    best = v2t.generate(vectors, max_new_tokens=5, num_beams=3, num_return_sequences=3, rerank=True)[0]
    assert record["generated"] == best.text and record["cosine"] == pytest.approx(best.cosine, abs=1e-4)


def test_generate_keeps_to_the_output_vocabulary_unless_full_vocab(v2t, tmp_path, capsys):
    token, piece = first_token_vocab(v2t, v2t.encode(["Где лодка?", "Кошка спит."]))
    v2t.set_output_vocab([token])
    try:
        bundle = v2t.save_adapter(tmp_path / "vocab-bundle")
    finally:
        v2t.set_output_vocab(None)
    args = ["generate", "--adapter", str(bundle), "--text", "Где лодка?", "Кошка спит.", "--max-new-tokens", "6"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ==>")[0] for line in lines] == ["Где лодка?", "Кошка спит."]
    kept = [line.split(" ==>", 1)[1].strip() for line in lines]
    assert all(only_made_of(text, piece) for text in kept) and any(kept)
    assert main(args + ["--full-vocab"]) == 0
    free = [line.split(" ==> ", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert free == v2t.invert(["Где лодка?", "Кошка спит."], max_new_tokens=6)


def test_info_describes_the_bundle(bundle, capsys):
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "hidden 32, vocab 300" in out and "24-d" in out and "steps: 7" in out and "mlp, 1 slot(s)" in out
    assert "trained on   quantization none, compute dtype float32" in out
    assert main(["info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"] == {"steps": 7}


@pytest.mark.parametrize("make_args,message", [
    (lambda b, t: ["info", str(t / "nope")], "does not exist"),
    (lambda b, t: ["generate", "--adapter", str(b), "--text", "  "], "text 0 is empty"),
    (lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "missing.npy")], "does not exist"),
    (lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "wrong.npy")], "dimension 5"),
    (lambda b, t: ["generate", "--adapter", str(b), "--vectors", str(t / "objects.npy")], "plain numeric"),
    (lambda b, t: ["generate", "--adapter", str(b), "--text", "a", "--num-return-sequences", "2"], "num_beams"),
])
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
