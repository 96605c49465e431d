"""Local policy models, shared by evaluation and the trainer: :mod:`~envhub.models.loading` (any
Hugging Face causal LM, the embedded default converted from GGUF once, LoRA adapters), stop tokens,
batched decoding (:mod:`~envhub.models.decoding`) and the trainer's mixed precision
(:mod:`~envhub.models.precision`).
Importing this package is cheap: torch and transformers load only when a model is loaded."""
