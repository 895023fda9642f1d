"""nn.precision: bfloat16 only where the CPU has bfloat16 dot instructions.

The /proc/cpuinfo excerpts are the first lines of real machines' files (flags cut to
the ones that matter plus a few neighbours): the AMD EPYC Zen 3 of issue 11, where
bfloat16 steps ran 1.25-1.56x slower than float32, this project's Intel Sapphire
Rapids and AMD Zen 4 machines, and an Arm Neoverse V1 (Graviton 3).
"""
import jax.numpy as jnp
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import precision

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 fma avx512f avx512dq avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = """model name\t: AMD EPYC 9B14
flags\t\t: fpu avx2 fma avx512f avx512_bf16 avx512vl avx512_vnni
"""
NEOVERSE_V1 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text, model, native", [
    (ZEN3, "AMD EPYC 7B13", False),
    (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Processor", True),
    (ZEN4, "AMD EPYC 9B14", True),
    (NEOVERSE_V1, "", True),
])
def test_bfloat16_follows_the_cpu(text, model, native):
  parsed_model, flags = precision.parse_cpuinfo(text)
  assert parsed_model == model
  assert precision.native_bfloat16(flags, backend="cpu") is native
  want = jnp.bfloat16 if native else jnp.float32
  assert precision.compute_dtype("bfloat16", flags, backend="cpu") == want
  assert precision.compute_dtype("float32", flags, backend="cpu") == jnp.float32


def test_accelerators_and_unknown_cpus_keep_bfloat16():
  _, zen3 = precision.parse_cpuinfo(ZEN3)
  assert precision.compute_dtype("bfloat16", zen3, backend="gpu") == jnp.bfloat16
  assert precision.compute_dtype("bfloat16", zen3, backend="tpu") == jnp.bfloat16
  assert precision.compute_dtype("bfloat16", frozenset(), backend="cpu") == jnp.bfloat16


def test_unknown_dtype_is_a_user_error():
  with pytest.raises(UserError, match="model.dtype='float16'"):
    precision.compute_dtype("float16")


def test_this_machine_is_described():
  described = precision.describe_cpu()
  assert described["cpu_model"] and described["cpus"] >= 1
  assert set(described["cpu_flags"]) <= set(precision.REPORTED_FLAGS)
