"""What this machine trains on: the CPU's name and flags, the device TensorFlow places a model on, and
whether that device computes bfloat16 natively (which decides `--precision auto`).

TensorFlow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 flags of native bfloat16 arithmetic (AVX-512 BF16, AMX); without them TensorFlow emulates bf16 slowly."""
BF16_GPU_CAPABILITY = (8, 0)
"""CUDA compute capability from which GPUs have bfloat16 tensor cores (Ampere and later)."""


def _cpuinfo_field(name: str, cpuinfo: Path = CPUINFO) -> str:
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    values = [line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name]
    return values[0] if values else ""


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def gpus() -> list[dict]:
    """TensorFlow's GPUs: name and compute capability (a tuple, or None where TensorFlow does not say)."""
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device) or {}
        found.append(
            {"name": details.get("device_name", device.name), "compute_capability": details.get("compute_capability")}
        )
    return found


def training_device() -> dict:
    """Where Keras trains a model here: the first GPU when TensorFlow sees one, else the CPU."""
    found = gpus()
    if found:
        return {"type": "GPU", **found[0], "gpus": len(found)}
    return {"type": "CPU", "name": cpu_model()}


def native_bf16(device: dict, flags: set[str] | None = None) -> bool:
    """Whether `device` (training_device()) computes bfloat16 natively: a GPU of compute capability ≥ 8.0,
    or a CPU with AVX-512 BF16 or AMX."""
    if device["type"] == "GPU":
        capability = device.get("compute_capability")
        return capability is not None and tuple(capability) >= BF16_GPU_CAPABILITY
    return bool((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))


def resolve_precision(precision: str, device: dict) -> str:
    """`auto` → mixed_bfloat16 where the device has native bf16, else float32; other values unchanged."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bf16(device) else "float32"
