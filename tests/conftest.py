"""Test-session set-up shared by every package's tests.

Eight fake CPU devices are requested *before* jax is imported anywhere, so
sharding tests can build (data, fsdp, tensor) meshes; single-device tests
simply use a mesh of ``jax.devices()[:1]``.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
