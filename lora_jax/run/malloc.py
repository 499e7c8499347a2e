"""Host memory policy for XLA:CPU (applied by the entry points, lora_jax.run.entry; public face:
:mod:`lora_jax.run.hostmem`): keep the per-step temp buffer mapped between steps.

XLA:CPU allocates one temp buffer per execution of a compiled program (activations saved for
the backward, logits, their gradients: 1.9 GB for the SmolLM2-135M LoRA step at batch 8 × 128)
with ``malloc`` and frees it when the step ends. glibc serves a block that large with a fresh
``mmap`` (blocks over 32 MB always are, and a thread arena's large blocks always are) and
``munmap``s it on free, so every step page-faults the whole buffer in again: about 490,000
faults and ~1 s of kernel time per step (page zeroing), more when other allocations fragmented
memory in between.

:func:`retain` sets glibc's allocator (``mallopt``, process-wide) to serve every thread from
the main heap, never with ``mmap``, and never to give freed memory back to the OS, so from the
second step on the temp buffer reuses pages that are already mapped (0 faults per step on the
SmolLM2 step; an occasional call still grows the heap while it settles). The cost: the
process's resident memory stays at its peak, as JAX's GPU allocator holds device memory by
default.

The command-line entry points (``python -m lora_jax.train|evaluate|bench``, lora_jax.run.entry)
apply it on Linux/glibc before jax is imported, except when ``LORA_JAX_HOST_MALLOC=system`` is
set, when jax will run on a GPU/TPU, or when other threads already have malloc arenas (then it
would not take for them, and measured slower than the default). ``import lora_jax`` never
applies it: a library import changes no process-wide state. A script of your own gets the
same policy from the environment:
``eval "$(python -m lora_jax.run.hostmem)"`` (:mod:`lora_jax.run.hostmem`). ``status()`` says which
applies; results.json records it as ``run.host_malloc``.

Measured on 2 CPU cores (benchmarks/RESULTS.md, "the host malloc policy"): the SmolLM2-135M
q,v r=64 LoRA step 2.75 → 2.1 s alone, and 3.3 → 2.0 s right after a PyTorch step in the same
process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

ENV = "LORA_JAX_HOST_MALLOC"  # "retain" (default) | "system"

# glibc malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied: bool | None = None
_reason: str | None = None

# The same policy from the environment, for a process where something else starts threads
# before lora_jax is imported (glibc reads these at start-up).
ENV_EQUIVALENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        return None
    gnu.restype = ctypes.c_char_p
    return libc


def malloc_arenas(libc=None) -> int | None:
    """How many glibc malloc arenas exist (``malloc_info``'s ``<heap nr=...>`` entries), or
    None off glibc."""
    libc = libc or _libc()
    if libc is None:
        return None
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    fp = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not fp:
        return None
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    try:
        return ctypes.string_at(buf, size.value).decode().count("<heap nr=")
    finally:
        libc.free(buf)


def _accelerator_installed() -> bool:
    """A jax GPU/TPU plugin is installed or JAX_PLATFORMS leaves the CPU out: jax will not run
    on the host CPU, so its temp buffers are not host memory."""
    plats = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if plats and "cpu" not in plats.split(","):
        return True
    if plats and plats.split(",")[0] == "cpu":
        return False
    names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")
    return any(importlib.util.find_spec(n) is not None for n in names)


def retain() -> bool:
    """Apply the policy; returns whether it is in effect. Not applied (False) off Linux/glibc,
    or once other threads have their own malloc arenas (applied that late, a thread arena
    still maps each large block afresh, and measured slower than the default): import
    ``lora_jax`` before jax/torch start threads, or set the equivalent environment variables
    (:data:`ENV_EQUIVALENT`) before Python starts."""
    global _applied, _reason
    libc = _libc()
    if libc is None:
        _applied, _reason = False, "not glibc"
        return False
    n = malloc_arenas(libc)
    if n != 1:
        _applied, _reason = False, f"{n} malloc arenas already exist (import lora_jax first)"
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(opt, val)
        for opt, val in (
            (_M_ARENA_MAX, 1),  # new threads share the main heap (no mmap-only thread arenas)
            (_M_MMAP_MAX, 0),  # large blocks from the heap, not a fresh mmap each time
            (_M_TRIM_THRESHOLD, -1),  # -1: never trim; freed memory stays mapped for the next step
            (_M_TOP_PAD, 64 << 20),  # grow the heap in 64 MiB steps
        )
    )
    _applied, _reason = bool(ok), None if ok else "mallopt refused"
    return _applied


def from_environment() -> bool:
    """The policy was set from the environment (:data:`ENV_EQUIVALENT`) when the process
    started."""
    return all(os.environ.get(k) == v for k, v in ENV_EQUIVALENT.items() if k != "MALLOC_TOP_PAD_")


def status() -> str:
    """``"retain"``, ``"retain (environment)"`` or ``"system: <why>"``: recorded in
    results.json next to the backend."""
    if from_environment():
        return "retain (environment)"
    if _applied:
        return "retain"
    return f"system: {_reason or 'not applied'}"


def apply_from_env() -> None:
    global _reason
    mode = os.environ.get(ENV, "retain").strip().lower()
    if mode == "system":
        _reason = f"{ENV}=system"
        return
    if mode != "retain":
        raise ValueError(f"{ENV}={mode!r}: use 'retain' (default) or 'system'")
    if _accelerator_installed():
        _reason = "jax runs on an accelerator (GPU/TPU plugin or JAX_PLATFORMS)"
        return
    retain()
