"""RNG states in checkpoints: the CPU's and every CUDA device's, per process (faked CUDA on the CPU); resuming runs
saved by older versions."""

import copy
from pathlib import Path

import pytest
import torch

import lora_v2t.train.checkpoint as checkpoint
from lora_v2t import V2TError
from lora_v2t.train.checkpoint import _rng_of_rank, rng_state, set_rng_state


class FakeCuda:
    """Two CUDA devices whose generator states are recorded instead of set."""

    def __init__(self, monkeypatch, count=2):
        self.states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(count)]
        self.set_calls: list[tuple[int, list[int]]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(
            torch.cuda, "set_rng_state", lambda state, device="cuda": self.set_calls.append((device, state.tolist()))
        )


def test_every_cuda_device_is_saved_and_restored(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    state = rng_state()
    assert sorted(state) == ["cuda.0", "cuda.1", "torch"]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    state = rng_state()
    torch.rand(5)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)  # the CPU generator is back where it was
    assert cuda.set_calls == [(0, [10] * 16), (1, [11] * 16)]


def test_each_process_gets_its_own_states_back():
    saved = {
        "rng.torch": torch.zeros(2),
        "rng.cuda.0": torch.zeros(1),
        "rng.rank1.torch": torch.ones(2),
        "rng.rank1.cuda.0": torch.ones(1),
        "state.0.exp_avg": torch.zeros(3),
    }
    assert {k: v.tolist() for k, v in _rng_of_rank(saved, 0).items()} == {"torch": [0, 0], "cuda.0": [0]}
    assert {k: v.tolist() for k, v in _rng_of_rank(saved, 1).items()} == {"torch": [1, 1], "cuda.0": [1]}
    assert _rng_of_rank(saved, 2)["torch"].tolist() == [0, 0]  # not saved for that rank: the main one's


def test_a_checkpoint_written_before_every_device_was_saved_restores_the_current_one(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    set_rng_state({"torch": torch.get_rng_state(), "cuda": torch.full((16,), 7, dtype=torch.uint8)})
    assert cuda.set_calls == [("cuda", [7] * 16)]


@pytest.mark.parametrize("stop", ["between_steps", "inside_a_step"])
def test_training_checkpoints_hold_the_cuda_states_of_the_moment_they_describe(
    stop, tmp_path, tiny_backbone_dir, tiny_encoder_dir, monkeypatch
):
    """The in-step snapshot carries the CUDA states from before the step, like the CPU's."""
    from safetensors.torch import load_file

    import lora_v2t.train.trainer as train_module
    from lora_v2t.model.vector2text import Vector2Text

    from .test_train import corpus_file, recipe

    calls = {"rng": 0, "forward": 0}

    def numbered_rng_state():  # a fake CUDA state that says when it was taken
        calls["rng"] += 1
        return {"torch": torch.get_rng_state(), "cuda.0": torch.tensor([calls["rng"]], dtype=torch.uint8)}

    restored = []
    monkeypatch.setattr(train_module, "rng_state", numbered_rng_state)
    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: restored.append(state["cuda.0"].tolist()))
    real_forward = Vector2Text.forward

    def ctrl_c_in_the_fourth_forward(self, *args, **kwargs):
        calls["forward"] += 1
        if calls["forward"] == 4:
            raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    extra = (
        ["--training.max_steps=3", "--training.save_every=3"]
        if stop == "between_steps"
        else ["--training.max_steps=8", "--training.save_every=100", "--training.eval_every=100"]
    )
    if stop == "inside_a_step":
        monkeypatch.setattr(Vector2Text, "forward", ctrl_c_in_the_fourth_forward)
    cfg = recipe(tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus_file(tmp_path), *extra)
    if stop == "inside_a_step":
        with pytest.raises(KeyboardInterrupt):
            train_module.train(cfg, show_progress=False)
    else:
        train_module.train(cfg, show_progress=False)
    step = tmp_path / "runs" / "tiny-debug" / "step-000003"
    saved = load_file(str(step / "optimizer.safetensors"))["rng.cuda.0"].tolist()
    # between steps: the checkpoint's own states, taken after the snapshots of steps 1-3; inside step 4: the
    # snapshot from before step 4 (the 4th), not the states at the moment of the interrupt (the 5th)
    assert saved == [4]
    monkeypatch.setattr(Vector2Text, "forward", real_forward)
    further = recipe(
        tmp_path, tiny_backbone_dir, tiny_encoder_dir, corpus_file(tmp_path), *extra, "--training.max_steps=9"
    )  # a run that reached max_steps is finished: nothing to resume
    train_module.train(further, resume=True, show_progress=False)
    assert restored[0] == saved


def test_the_fp16_loss_scaler_is_saved_and_restored(tmp_path, tiny_backbone_dir, tiny_encoder):
    from lora_v2t.config import RunConfig, TrainingConfig
    from lora_v2t.train.checkpoint import load_checkpoint, save_checkpoint
    from lora_v2t.train.setup import make_optimizer

    from .conftest import make_v2t

    v2t = make_v2t(tiny_backbone_dir, tiny_encoder)
    cfg = RunConfig(training=TrainingConfig())
    optimizer, scheduler = make_optimizer(v2t, cfg.training)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    state = {"step": 3, "epoch": 0, "batch_in_epoch": 3, "sentences_seen": 24, "elapsed_s": 1.0}
    saved = save_checkpoint(tmp_path, v2t, optimizer, scheduler, state, cfg, [rng_state()], {"steps": 3}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu")  # a resumed run starts from the default scale 65536
    assert load_checkpoint(saved, v2t, optimizer, scheduler, scaler=fresh) == state
    assert fresh.state_dict()["scale"] == 512.0 and fresh.state_dict()["growth_interval"] == 7


def test_a_run_saved_before_a_setting_existed_resumes():
    """Its recipe lacks settings added since (they had their defaults then); checkpointing may change."""
    from lora_v2t.config import load_config
    from lora_v2t.train.checkpoint import check_same_recipe

    current = load_config(None, []).to_dict()
    saved = copy.deepcopy(current)
    del saved["backbone"]["int8_threshold"]
    saved["training"]["gradient_checkpointing"] = False  # the old default
    check_same_recipe(saved, current, Path("run"))
    current["backbone"]["int8_threshold"] = 0.0
    with pytest.raises(V2TError, match="backbone.int8_threshold was 6.0, now 0.0"):
        check_same_recipe(saved, current, Path("run"))


def test_a_resume_with_another_batch_order_is_refused():
    """The saved position (epoch, batch in epoch) points into one order: another data.order_seed would skip
    and repeat sentences. A run saved before order_seed existed had None, and resumes."""
    from lora_v2t.config import load_config
    from lora_v2t.train.checkpoint import check_same_recipe

    saved = load_config(None, []).to_dict()
    del saved["data"]["order_seed"]
    check_same_recipe(saved, load_config(None, []).to_dict(), Path("run"))
    with pytest.raises(V2TError, match="data.order_seed was None, now 4"):
        check_same_recipe(saved, load_config(None, ["--data.order_seed=4"]).to_dict(), Path("run"))
