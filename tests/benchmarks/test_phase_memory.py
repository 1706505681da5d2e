"""benchmarks/phase_memory.py: a phase's peak includes what it allocated, and counts towards its outer phase."""

import importlib.util
import os

import pytest
import torch

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "phase_memory.py")


@pytest.fixture()
def phase_memory():
    spec = importlib.util.spec_from_file_location("phase_memory", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs")
    return module


def test_phase_peaks_see_a_transient_allocation(phase_memory):
    size_gb = 0.2

    def allocate():
        block = torch.ones(int(size_gb * 1e9 / 4))  # touched pages: resident
        return float(block[-1])

    def idle():
        return None

    outer = phase_memory.phase("outer", lambda: phase_memory.phase("inner", allocate)())
    outer()
    phase_memory.phase("idle", idle)()
    peaks = phase_memory.PEAKS
    assert peaks["inner"] >= peaks["idle"] + 0.8 * size_gb  # freed by the time "idle" runs
    assert peaks["outer"] >= peaks["inner"]
