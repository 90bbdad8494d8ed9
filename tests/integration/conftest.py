import pytest

from .harness import reap


@pytest.fixture(autouse=True)
def _reap_processes():
    """Processes a test started never outlive it, even when it fails."""
    yield
    reap()
