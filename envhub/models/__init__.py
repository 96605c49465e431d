"""Local policy models, shared by evaluation and the trainer: :mod:`~envhub.models.loading` (any
Hugging Face causal LM, the embedded default converted from GGUF once, LoRA adapters) and stop tokens.
Importing this package is cheap: torch and transformers load only when a model is loaded."""
