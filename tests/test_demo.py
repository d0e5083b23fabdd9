import pytest

import lora_v2t.train as train_module
from lora_v2t.adapter import BUNDLE_FILES, OUTPUT_VOCAB_FILE
from lora_v2t.demo import DEMO_SENTENCES, run_demo


def test_the_shipped_sample_is_real_russian_text():
    lines = DEMO_SENTENCES.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 100 and len(set(lines)) == len(lines)
    assert all(line.strip() and any("а" <= c <= "я" for c in line.lower()) for line in lines)


def test_demo_code_path_on_tiny_models_and_resume(tmp_path, tiny_backbone_dir, tiny_encoder_dir, capsys,
                                                  monkeypatch):
    real = train_module.validation_loss
    calls = {"n": 0}

    def interrupt_at_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "validation_loss", interrupt_at_second_evaluation)
    monkeypatch.setenv("LORA_V2T_HOME", str(tmp_path / "home"))  # the embedding cache goes there
    kwargs = {"minutes": 5.0, "output_dir": str(tmp_path), "backbone": tiny_backbone_dir,
              "encoder": tiny_encoder_dir, "max_steps": 12, "eval_every": 4, "show_progress": False}
    with pytest.raises(KeyboardInterrupt):
        run_demo(**kwargs)
    assert [p.name for p in train_module.list_checkpoints(tmp_path / "demo")] == ["step-000008"]
    capsys.readouterr()
    final = run_demo(**kwargs)  # picks up where it stopped
    out = capsys.readouterr().out
    assert "Resuming the interrupted demo from step-000008" in out
    import json

    steps = [json.loads(line)["step"] for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 12 and steps.count(4) == 1  # resumed after step 8: nothing was redone
    assert sorted(p.name for p in final.iterdir()) == sorted(BUNDLE_FILES + (OUTPUT_VOCAB_FILE,))  # corpus loss
    assert "load_adapter(" in out and " ==> " in out and "about 8 minutes" in out
    assert not list((tmp_path / "demo").glob(".*"))  # nothing half-written left behind
    run_demo(**kwargs)
    assert "already trained" in capsys.readouterr().out
