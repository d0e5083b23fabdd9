"""The model: Vector2Text, its backbone, projector, LoRA, encoders and the decoding primitives it calls
(generate, correction, output vocabularies, the subset loss)."""
