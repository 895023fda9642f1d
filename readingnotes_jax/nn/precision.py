"""The compute dtype a config names, chosen for the processor it runs on.

bfloat16 is faster than float32 only where the matrix units take it: TPUs, GPUs,
and CPUs with bfloat16 dot instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16).
Elsewhere XLA:CPU widens every bfloat16 operand to float32 and rounds results
back, so the same step runs slower than in float32. Measured on a 2-core AMD
EPYC Zen 3 (AVX2 only, issue 11): PSPNet-50 train step 7.93 s bfloat16 vs
6.35 s float32, ProGAN 55.3 s vs 35.4 s per benchmark iteration. On such a CPU
`compute_dtype("bfloat16")` is therefore float32, said once in the log; parameters
are float32 either way, so checkpoints move freely between machines. Models built
directly (`PSPNet(dtype=jnp.bfloat16)`) are not affected.
"""
import functools
import logging
import os
import pathlib
import platform

import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# /proc/cpuinfo flags that mean bfloat16 dot products in hardware: x86 (AVX512-BF16 from
# Cooper Lake and Zen 4, AMX-BF16 from Sapphire Rapids) and Arm ("bf16", Armv8.6).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Flags a benchmark or log line reports (what decides the lowerings and the dtype).
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                  "asimd", "sve", "bf16")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
  """(model name, feature flags) from the text of /proc/cpuinfo (x86 "flags", Arm "Features")."""
  model, flags = "", frozenset()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    key = key.strip().lower()
    if key == "model name" and not model:
      model = value.strip()
    elif key in ("flags", "features") and not flags:
      flags = frozenset(value.split())
  return model, flags


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
  """This machine's (CPU model, flags); flags empty where /proc/cpuinfo is missing."""
  try:
    model, flags = parse_cpuinfo(pathlib.Path("/proc/cpuinfo").read_text())
  except OSError:
    model, flags = "", frozenset()
  return model or platform.processor() or platform.machine(), flags


def describe_cpu() -> dict[str, object]:
  """CPU model, core count and the flags in `REPORTED_FLAGS` it has: for benchmark output."""
  model, flags = cpu_info()
  return {"cpu_model": model, "cpus": os.cpu_count(),
          "cpu_flags": [f for f in REPORTED_FLAGS if f in flags]}


def native_bfloat16(flags: frozenset[str] | None = None, backend: str | None = None) -> bool:
  """Whether bfloat16 dots run in hardware: always off the CPU; on a CPU, per `BF16_FLAGS`.

  A CPU whose flags cannot be read (no /proc/cpuinfo) counts as capable: the request stands.
  """
  if (backend or jax.default_backend()) != "cpu":
    return True
  flags = cpu_info()[1] if flags is None else flags
  return not flags or bool(flags & BF16_FLAGS)


@functools.cache
def _say_float32_instead(model: str) -> None:
  logging.warning("model.dtype=bfloat16: this CPU (%s) has no bfloat16 dot instructions "
                  "(avx512_bf16, amx_bf16), where bfloat16 runs slower than float32: "
                  "computing in float32", model)


def compute_dtype(name: str, flags: frozenset[str] | None = None,
                  backend: str | None = None) -> jnp.dtype:
  """The dtype for a config's `model.dtype`: as named, except bfloat16 on a CPU without
  bfloat16 dot instructions (`native_bfloat16`), which computes in float32."""
  if name not in DTYPES:
    raise UserError(f"model.dtype={name!r}: use one of {sorted(DTYPES)}")
  if name == "bfloat16" and not native_bfloat16(flags, backend):
    _say_float32_instead(cpu_info()[0])
    return jnp.dtype(jnp.float32)
  return jnp.dtype(DTYPES[name])
