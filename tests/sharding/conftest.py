"""The 8-device sharding tests (multidevice/) need XLA's CPU client created with 8 devices,
which must happen before jax initialises its backend, so they run in their own pytest process:
test_spawn.py starts it with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``. In any
other process they are not collected (they would see one device)."""

import os

if os.environ.get("LORA_JAX_8_DEVICES") != "1":
    collect_ignore = ["multidevice"]
