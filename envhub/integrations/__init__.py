"""envhub environments for other trainers and tools, and other tools' data for envhub: TRL,
skyrl-gym, Hugging Face datasets, OpenEnv's tooling. Each module imports its peer package only
when used; none is needed to use envhub itself."""
