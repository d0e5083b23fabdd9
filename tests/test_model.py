import numpy as np
import pytest
import torch

from lora_v2t import V2TError, Vector2Text
from lora_v2t.config import config_from_dict
from lora_v2t.model.lora import default_target_modules
from lora_v2t.model.loss import SubsetLoss
from lora_v2t.train.data import tokenize_corpus
from lora_v2t.util.vectors import to_vectors

from .conftest import SENTENCES, make_v2t


def test_inputs_are_prefix_then_tokens_with_masked_labels(v2t):
    batch = v2t.tokenize(["Где лодка?", "Кошка спит на диване."])
    vectors = torch.randn(2, v2t.embedding_dim)
    inputs = v2t.build_inputs(vectors, **batch)
    k = v2t.projector.prefix_length
    n_short = int(batch["attention_mask"][0].sum())
    assert inputs["inputs_embeds"].shape[:2] == (2, k + batch["input_ids"].shape[1])
    assert torch.equal(inputs["inputs_embeds"][:, :k], v2t.prefix(vectors))
    labels = inputs["labels"]
    assert (labels[:, :k] == -100).all()
    assert (labels[0, k + n_short :] == -100).all()  # padding of the shorter sentence
    assert labels[0, k + n_short - 1] == v2t.tokenizer.eos_token_id  # every target ends with EOS
    assert torch.equal(labels[1, k:], batch["input_ids"][1])
    assert inputs["attention_mask"][:, :k].eq(1).all()


def test_prefix_length_is_respected(tiny_backbone_dir, tiny_encoder):
    v2t = make_v2t(tiny_backbone_dir, tiny_encoder, prefix_length=3, projector="linear")
    vectors = torch.randn(2, tiny_encoder.dim)
    assert v2t.prefix(vectors).shape == (2, 3, v2t.backbone_info["hidden_size"])
    assert torch.isfinite(v2t.loss(vectors, SENTENCES[:2]))


def test_only_lora_and_projector_train(v2t):
    trainable = {id(p) for p in v2t.trainable_parameters()}
    lora_params = {id(p) for n, p in v2t.model.named_parameters() if "lora_" in n}
    base_params = {id(p) for n, p in v2t.model.named_parameters() if "lora_" not in n}
    assert lora_params and lora_params <= trainable and not base_params & trainable
    base_names = [n for n, p in v2t.model.named_parameters() if "lora_" not in n]
    assert base_names and not any(p.requires_grad for n, p in v2t.model.named_parameters() if "lora_" not in n)
    assert all(id(p) in trainable for p in v2t.projector.parameters())
    lora = [n for n, _ in v2t.model.named_parameters() if "lora_" in n]
    assert any("c_attn" in n for n in lora) and any("attn.c_proj" in n for n in lora)
    assert not any("mlp.c_proj" in n for n in lora)  # attention only by default


def test_loss_falls_when_overfitting_four_sentences(tiny_backbone_dir, tiny_encoder):
    v2t = make_v2t(tiny_backbone_dir, tiny_encoder, perturb=False, lora_dropout=0.0)
    vectors = torch.randn(4, v2t.embedding_dim, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(v2t.trainable_parameters(), lr=1e-2)
    v2t.train()
    first = None
    for _ in range(60):
        loss = v2t.loss(vectors, SENTENCES[:4])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.4 * first
    assert v2t.generate(vectors[:1], max_new_tokens=12)[0] == SENTENCES[0]  # memorised


def test_target_modules_per_architecture():
    assert default_target_modules("gpt2") == ["c_attn", "attn.c_proj"]
    assert default_target_modules("gemma3_text") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_target_modules("llama") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(V2TError, match="pass target_modules"):
        default_target_modules("my-new-arch")


def test_target_modules_can_be_overridden(tiny_backbone_dir, tiny_encoder):
    v2t = make_v2t(tiny_backbone_dir, tiny_encoder, target_modules=["c_fc"])
    names = [n for n, _ in v2t.model.named_parameters() if "lora_" in n]
    assert names and all("c_fc" in n for n in names)


def test_target_modules_that_match_nothing_are_refused_naming_the_layers(tiny_backbone_dir, tiny_encoder):
    with pytest.raises(
        V2TError,
        match=r"target_modules \['nope'\] match no layer of the backbone; its layers are "
        r"named \[.*'c_attn'.*\]",
    ):
        make_v2t(tiny_backbone_dir, tiny_encoder, target_modules=["nope", "c_fc"])


def test_lora_can_be_limited_to_some_blocks(tiny_backbone_dir, tiny_encoder, tmp_path):
    v2t = make_v2t(tiny_backbone_dir, tiny_encoder, lora_layers=[1])
    names = [n for n, _ in v2t.model.named_parameters() if "lora_" in n]
    assert names and all(".h.1." in n for n in names)
    bundle = v2t.save_adapter(tmp_path / "upper")
    assert "of blocks 1" in (bundle / "README.md").read_text()
    with pytest.raises(V2TError, match=r"beyond the backbone's 2 \(indices 0..1\)"):
        make_v2t(tiny_backbone_dir, tiny_encoder, lora_layers=[0, 2])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"quantization": "3bit"}, "unknown quantization '3bit'"),
        ({"trainable": "half"}, "unknown training.trainable 'half'"),
        ({"role": "critic"}, "unknown training.role 'critic'"),
        ({"projector": "conv"}, "unknown projector kind 'conv'"),
        ({"lora_r": 0}, "lora r must be an integer >= 1"),
        ({"int8_threshold": -1.0}, "backbone.int8_threshold"),
        ({"trainable": "full", "quantization": "8bit"}, "full fine-tuning .* cannot on a 8bit base"),
        ({"encoder": None}, "create needs an encoder"),
        ({"backbone": None}, "backbone.name must be a hub id"),
        ({"encoder": "precomputed:0"}, "bad encoder spec 'precomputed:0'"),
    ],
)
def test_create_refuses_bad_settings_before_loading_the_backbone(kwargs, message, tiny_encoder):
    # the backbone does not exist: a settings error must come first, from the configs create builds
    with pytest.raises(V2TError, match=message):
        Vector2Text.create(**{"backbone": "/nonexistent/backbone", "encoder": tiny_encoder, "device": "cpu"} | kwargs)


def test_a_users_encoder_needs_only_encode_texts_and_its_own_errors_come_through(tiny_backbone_dir, tiny_encoder):
    class Plain:  # the Encoder protocol: spec, dim, encode(texts)
        spec, dim = "my-encoder", tiny_encoder.dim
        calls = 0

        def encode(self, texts):
            Plain.calls += 1
            if texts == ["boom"]:
                raise TypeError("my encoder's own bug")
            return tiny_encoder.encode(texts)

    v2t = make_v2t(tiny_backbone_dir, Plain())
    assert v2t.encode(["Где лодка?"], show_progress=True).shape == (1, tiny_encoder.dim)
    Plain.calls = 0
    with pytest.raises(TypeError, match="my encoder's own bug"):
        v2t.encode(["boom"])
    assert Plain.calls == 1  # called once, not retried without show_progress


def test_lora_layers_are_bounded_by_the_text_model_of_a_multimodal_config():
    from transformers import Gemma3Config, GPT2Config

    from lora_v2t.config import LoRAConfig
    from lora_v2t.model.backbone import num_blocks
    from lora_v2t.model.lora import make_lora_config

    gemma = Gemma3Config()  # multimodal: the blocks are its text config's
    assert num_blocks(gemma) == gemma.get_text_config().num_hidden_layers > 0
    assert num_blocks(GPT2Config(n_layer=24)) == 24
    with pytest.raises(V2TError, match="beyond the backbone's"):
        make_lora_config(LoRAConfig(layers=[num_blocks(gemma)]), gemma)


def test_create_and_from_config_build_the_same_adapter(tiny_backbone_dir, tiny_encoder):
    cfg = config_from_dict(
        {
            "backbone": {"name": str(tiny_backbone_dir), "quantization": "none"},
            "projector": {"kind": "linear", "prefix_length": 2},
            "lora": {"r": 4, "layers": [1]},
            "training": {"seed": 7},
        }
    )
    from_cfg = Vector2Text.from_config(cfg, encoder=tiny_encoder, device="cpu")
    created = Vector2Text.create(
        backbone=str(tiny_backbone_dir),
        encoder=tiny_encoder,
        projector="linear",
        prefix_length=2,
        lora_r=4,
        lora_layers=[1],
        quantization="none",
        device="cpu",
        seed=7,
    )
    a, b = from_cfg.state_dict(), created.state_dict()
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same settings: the same initial weights
    assert from_cfg.meta == created.meta


@pytest.mark.parametrize(
    "vectors,message",
    [
        (torch.randn(2, 7), "dimension 7 but the adapter's encoder makes 24-d"),
        (torch.tensor([[float("nan")] * 24]), r"vector\(s\) \[0\] contain NaN or inf"),
        (torch.tensor([[1.0] * 23 + [float("inf")], [0.0] * 24]), r"\[0\] contain NaN or inf"),
        (torch.zeros(0, 24), "empty batch"),
        ([], "empty batch"),  # not "dimension 0"
        (np.zeros(0, dtype=np.float32), "empty batch"),
        (torch.zeros(2, 3, 24), "must have shape"),
        ([["a", "b"]], "numeric"),
        ([[0.1] * 24, [0.1] * 23], r"vectors are rows of different lengths \(24 and 23\): give N rows of 24 numbers"),
        ([torch.ones(24), torch.ones(3)], r"rows of different lengths \(24 and 3\)"),
    ],
)
def test_bad_vectors(vectors, message):
    with pytest.raises(V2TError, match=message) as refused:
        to_vectors(vectors, 24)
    assert "\n" not in str(refused.value)


def test_a_ragged_list_of_vectors_is_one_line_from_generate(v2t):
    ragged = [[0.1] * v2t.embedding_dim, [0.1] * (v2t.embedding_dim - 1)]
    with pytest.raises(V2TError, match="vectors are rows of different lengths"):
        v2t.generate(ragged, max_new_tokens=2)


BAD_NAMES = [
    (5, "adapter name must be a non-empty string without '.', got 5"),
    ("", "adapter name must be a non-empty string without '.', got ''"),
    ("a.b", "adapter name must be a non-empty string without '.', got 'a.b'"),
]


@pytest.mark.parametrize("name,message", BAD_NAMES)
def test_bad_adapter_names_are_one_line_everywhere(v2t, tmp_path, no_base_load, name, message):
    from lora_v2t import load_adapter

    bundle = v2t.save_adapter(tmp_path / "bundle")
    for call in (
        lambda: load_adapter(bundle, name=name),
        lambda: v2t.load_adapter(bundle, name),
        lambda: v2t.set_adapter(name),
        lambda: v2t.delete_adapter(name),
    ):
        with pytest.raises(V2TError) as refused:
            call()
        assert str(refused.value).startswith(message)
    assert v2t.adapters == ["default"]


@pytest.mark.parametrize(
    "options,message",
    [
        ({"quantization": "3bit"}, "unknown quantization '3bit'; choose one of: auto, 8bit, 4bit, none"),
        ({"quantization": "8bit", "dtype": "half"}, "unknown dtype 'half'; choose one of: auto, float32, bfloat16"),
        ({"quantization": "8bit", "device": "foo"}, "unknown device 'foo': use cpu, cuda or cuda:N"),
    ],
)
def test_a_load_that_will_be_refused_warns_about_nothing_first(v2t, tmp_path, caplog, no_base_load, options, message):
    from lora_v2t import load_adapter

    bundle = v2t.save_adapter(tmp_path / "bundle")

    with caplog.at_level("WARNING"), pytest.raises(V2TError, match=message):
        load_adapter(bundle, **options)
    assert "was trained with quantization" not in caplog.text


def test_mismatched_batch_sizes(v2t):
    with pytest.raises(V2TError, match="one vector per text"):
        v2t.forward(torch.randn(3, v2t.embedding_dim), **v2t.tokenize(SENTENCES[:2]))


def test_bad_create_arguments(tiny_backbone_dir, tiny_encoder):
    with pytest.raises(V2TError, match="unknown projector kind"):
        make_v2t(tiny_backbone_dir, tiny_encoder, projector="transformer")
    with pytest.raises(V2TError, match="unknown quantization"):
        make_v2t(tiny_backbone_dir, tiny_encoder, quantization="2bit")
    with pytest.raises(V2TError, match="prefix_length"):
        make_v2t(tiny_backbone_dir, tiny_encoder, prefix_length=0)


def reference_subset_loss(v2t, inputs: dict, vocab: torch.Tensor) -> torch.Tensor:
    """The full output layer's logits, log-softmax over ``vocab`` only, mean NLL at the labelled positions."""
    logits = v2t.model(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"]).logits
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logp = torch.log_softmax(logits[:, :-1][keep][:, vocab].float(), dim=-1)
    return -logp[torch.arange(len(logp)), torch.searchsorted(vocab, labels[keep])].mean()


def test_the_subset_loss_is_the_softmax_over_its_vocabulary(v2t):
    batch = v2t.tokenize(SENTENCES[:3])
    vectors = torch.randn(3, v2t.embedding_dim, generator=torch.Generator().manual_seed(0))
    vocab = torch.unique(
        torch.cat([batch["input_ids"][batch["attention_mask"] == 1], torch.tensor([v2t.tokenizer.eos_token_id, 7, 11])])
    )
    with torch.no_grad():
        inputs = v2t.build_inputs(vectors, **batch)
        expected = reference_subset_loss(v2t, inputs, vocab)
        kept = SubsetLoss(v2t.base_model, vocab, check_labels=False)  # the trainer's: rows kept between steps
        for loss in (v2t.forward(vectors, **batch, loss_vocab=vocab).loss, kept(inputs), kept(inputs)):
            assert torch.allclose(loss, expected, atol=1e-5)
        with pytest.raises(V2TError, match="a label is missing from loss_vocab"):
            v2t.forward(vectors, **batch, loss_vocab=vocab[vocab != v2t.tokenizer.eos_token_id])


def test_the_subset_loss_computes_its_logits_in_fp32_under_bf16_autocast(v2t):
    batch = v2t.tokenize(SENTENCES[:3])
    vocab = torch.unique(torch.cat([batch["input_ids"].flatten(), torch.tensor([v2t.tokenizer.eos_token_id])]))
    loss_fn = SubsetLoss(v2t.base_model, vocab)
    with torch.no_grad():
        inputs = v2t.build_inputs(
            torch.randn(3, v2t.embedding_dim, generator=torch.Generator().manual_seed(1)), **batch
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(inputs)
            body = getattr(v2t.base_model, v2t.base_model.base_model_prefix)
            hidden = body(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"])[0]
        labels = inputs["labels"][:, 1:]
        keep = labels != -100
        head = v2t.base_model.get_output_embeddings().weight[vocab]
        states, targets = hidden[:, :-1][keep], torch.searchsorted(vocab, labels[keep])
        expected = torch.nn.functional.cross_entropy(states.float() @ head.float().T, targets)  # the head in fp32
        in_bf16 = torch.nn.functional.cross_entropy((states.bfloat16() @ head.bfloat16().T).float(), targets)
    assert abs(float(expected) - float(in_bf16)) > 1e-4  # the check below tells the two apart
    assert abs(float(loss) - float(expected)) < 1e-5


def test_the_subset_loss_trains_an_output_layer_that_trains(v2t):
    """Fully fine-tuned, the output layer changes at every step: its rows are gathered at every call, with
    gradients."""
    head = v2t.base_model.get_output_embeddings()
    batch = v2t.tokenize(SENTENCES[:2])
    vocab = torch.unique(torch.cat([batch["input_ids"].flatten(), torch.tensor([v2t.tokenizer.eos_token_id])]))
    head.weight.requires_grad_(True)
    try:
        loss_fn = SubsetLoss(v2t.base_model, vocab)
        inputs = v2t.build_inputs(torch.randn(2, v2t.embedding_dim), **batch)
        loss_fn(inputs).backward()
        assert head.weight.grad is not None and head.weight.grad[vocab].abs().sum() > 0
        with torch.no_grad():
            before = loss_fn(inputs)
            head.weight[vocab] *= 2
            assert not torch.allclose(loss_fn(inputs), before)
            head.weight[vocab] /= 2
    finally:
        head.weight.requires_grad_(False)
        head.weight.grad = None


def test_batches_from_the_tokenised_corpus_equal_tokenised_texts(v2t):
    texts = SENTENCES[:5] + ["слово " * 50]  # the last one is cut
    corpus = tokenize_corpus(v2t.tokenizer, texts, max_tokens=12, chunk=4)
    assert corpus.lengths.tolist() == [min(len(ids) + 1, 12) for ids in v2t.token_ids(texts)]
    assert set(corpus.vocab.tolist()) == {v2t.tokenizer.eos_token_id} | {
        t for ids in v2t.token_ids(texts) for t in ids[:11]
    }
    idx = [5, 0, 3]
    picked = [texts[i] for i in idx]
    for got, want in (
        (v2t.pad_rows(corpus.rows(idx), 12), v2t.tokenize(picked, 12)),
        (
            v2t.pad_rows(corpus.rows(idx), 12, corpus.rows([1, 2, 4])),
            v2t.tokenize(picked, 12, contexts=[texts[i] for i in (1, 2, 4)]),
        ),
    ):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
