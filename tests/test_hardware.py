"""The training device and native bfloat16 detection behind `--precision auto`."""

from env.common.hardware import cpu_flags, cpu_model, native_bf16, resolve_precision, training_device

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu sse2 avx2 {extra}

processor\t: 1
model name\t: Example CPU 9000
flags\t\t: fpu sse2 avx2 {extra}
"""


def test_cpu_name_and_flags_come_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra="avx512f avx512_bf16"))
    assert cpu_model(path) == "Example CPU 9000"
    assert cpu_flags(path) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_precision_picks_bf16_only_where_the_device_has_it():
    cpu = {"type": "CPU", "name": "x"}
    assert not native_bf16(cpu, {"avx2", "fma"})
    assert native_bf16(cpu, {"avx2", "avx512_bf16"}) and native_bf16(cpu, {"amx_bf16"})
    assert native_bf16({"type": "GPU", "compute_capability": (8, 0)})
    assert not native_bf16({"type": "GPU", "compute_capability": (7, 5)})
    assert not native_bf16({"type": "GPU", "compute_capability": None})
    ampere = {"type": "GPU", "compute_capability": (8, 6)}
    assert resolve_precision("auto", ampere) == "mixed_bfloat16"
    assert resolve_precision("auto", {"type": "GPU", "compute_capability": (7, 0)}) == "float32"
    assert resolve_precision("float32", ampere) == "float32"
    assert resolve_precision("mixed_bfloat16", {"type": "GPU", "compute_capability": (6, 1)}) == "mixed_bfloat16"


def test_the_training_device_is_a_gpu_exactly_when_tensorflow_sees_one():
    import tensorflow as tf

    device = training_device()
    assert device["type"] == ("GPU" if tf.config.list_physical_devices("GPU") else "CPU")
    assert device["name"]
