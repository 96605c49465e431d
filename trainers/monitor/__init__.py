"""The training-time reward-hacking monitor: detectors over each step's rollouts, alerts with
evidence and a suggested rubric fix, a held-out sentinel, and the audit's probes rerun.

:mod:`trainers.monitor.detectors` holds the detectors (pure functions, each with its documented
threshold), :mod:`trainers.monitor.probes` the checks that play episodes (sentinel, audit, style
probe, reference answers), :mod:`trainers.monitor.monitor` the :class:`HackMonitor` that the
training loop calls once a step.
"""

from trainers.monitor.detectors import DEFAULT_THRESHOLDS, Finding, Thresholds
from trainers.monitor.monitor import SAMPLES_FILE, HackMonitor, MonitorSettings

__all__ = ["DEFAULT_THRESHOLDS", "SAMPLES_FILE", "Finding", "HackMonitor", "MonitorSettings", "Thresholds"]
