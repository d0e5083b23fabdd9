"""What an adapter bundle folder holds: its format version and file names (see :mod:`lora_v2t.bundle.adapter`)."""

FORMAT_VERSION = 2  # 2: optional output vocabulary, generation.restrict_vocab, lora.layers
CORRECTOR_FORMAT_VERSION = 3  # 3: role (hypothesizer | corrector) and corrector; only correctors need it
BUNDLE_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "projector.safetensors",
    "v2t_config.json",
    "README.md",
)
# a fully fine-tuned model (training.trainable=full, a baseline) is saved whole: no LoRA, a backbone/ folder
FULL_MODEL_FILES = ("backbone", "projector.safetensors", "v2t_config.json", "README.md")
OUTPUT_VOCAB_FILE = "output_vocab.safetensors"  # optional, see Vector2Text.output_vocab
