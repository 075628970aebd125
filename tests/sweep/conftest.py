"""Fixtures shared by the sweep tests: the cluster-backend sweep and its local-backend reference, trained
once per session (tests/sweep/backend_sweep.py)."""
import pytest

from tests.sweep import backend_sweep


@pytest.fixture(scope="session")
def backend_sweep_file(tmp_path_factory):
    return backend_sweep.write_sweep(tmp_path_factory.mktemp("backend_sweep"))


@pytest.fixture(scope="session")
def local_reference_root(backend_sweep_file, tmp_path_factory):
    """ROOT of the whole backend sweep trained by the local backend (subprocess executor, one run at a time)."""
    return backend_sweep.local_reference(backend_sweep_file, str(tmp_path_factory.mktemp("local_reference") / "root"))
