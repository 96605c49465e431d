"""For environment authors: :mod:`~envhub.authoring.scaffold` (``envhub init``),
:mod:`~envhub.authoring.validate` (the contract checks) and :mod:`~envhub.authoring.audit`
(reward-hacking probes against a rubric)."""

from envhub.authoring.validate import ValidationReport, play, scripted, validate

__all__ = ["ValidationReport", "play", "scripted", "validate"]
