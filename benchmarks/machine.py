"""What a benchmark ran on, for its page and JSON.

Hosts of one machine kind differ: an AVX2-only EPYC without bfloat16 instructions ran a float32
training step in about twice the time of a host with avx512_bf16, and bf16 eight times slower.
So every page names the CPU model and whether it has bfloat16 instructions, not only the core count.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as the kernel gives it (``/proc/cpuinfo``), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    """The host now: platform, CPU model, cores, bfloat16 instructions, 1-minute load average."""
    from envhub.models.precision import cpu_has_bf16

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "bf16": cpu_has_bf16(),
        "load_at_start": os.getloadavg()[0],
    }


def in_words(machine: dict) -> str:
    """One line for a page: 'AMD EPYC, 2 CPUs, no bfloat16 instructions (Linux-...)'; a record
    written before the CPU was recorded says so instead of guessing."""
    if "cpu" not in machine:
        return f"{machine.get('cpus', '?')} CPUs, CPU model not recorded ({machine.get('platform', 'platform not recorded')})"
    bf16 = "bfloat16 instructions" if machine["bf16"] else "no bfloat16 instructions (bf16 is emulated)"
    return f"{machine['cpu']}, {machine['cpus']} CPUs, {bf16} ({machine['platform']})"
