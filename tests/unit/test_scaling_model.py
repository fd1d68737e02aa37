"""benchmarks/scaling_model.py: the analytic scaling model's pure functions, checked against the
ring formulas worked by hand and against properties any such model must have."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace

import pytest

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "scaling_model", REPO_ROOT / "benchmarks" / "scaling_model.py"
)
assert _spec is not None and _spec.loader is not None
model = importlib.util.module_from_spec(_spec)
sys.modules["scaling_model"] = model  # dataclasses look their module up
_spec.loader.exec_module(model)

FULL_13B = model.llama_shape("13b", 13e9, 40, 5120, 2048)
LORA = model.Workload("lora", 8e9, 20e6, 2, 8192, 6 * 8e9)
HW = model.Hardware()


def test_ring_allreduce_is_the_textbook_formula() -> None:
    assert model.ring_allreduce_s(1e9, 1, 1e9, 1e-5) == 0.0
    assert model.ring_allreduce_s(1e9, 4, 1e9, 1e-5) == pytest.approx(1.5 + 6e-5)
    big = model.ring_allreduce_s(1e9, 1024, 1e9, 0.0)
    assert big == pytest.approx(2 * 1023 / 1024)  # bandwidth term tends to 2 S / B


def test_stage_3_sends_about_1_5x_what_stages_0_to_2_send() -> None:
    for stage in (0, 1, 2):
        assert model.comm_bytes(replace(FULL_13B, zero_stage=stage), 64) == pytest.approx(
            2 * 63 / 64 * 13e9 * 2
        )
    assert model.comm_bytes(FULL_13B, 64) == pytest.approx(3 * 63 / 64 * 13e9 * 2)
    assert model.comm_bytes(FULL_13B, 1) == 0.0
    # the times follow the bytes when latency is nothing
    no_latency = replace(HW, latency_s=0.0)
    low = model.comm_s(replace(FULL_13B, zero_stage=2), 64, no_latency)
    assert model.comm_s(FULL_13B, 64, no_latency) / low == pytest.approx(1.5)


def test_efficiency_is_one_on_one_gpu_and_never_above() -> None:
    for work in (FULL_13B, LORA):
        assert model.efficiency(work, 1, HW) == 1.0
        values = [model.efficiency(work, n, HW) for n in (2, 8, 64, 1024)]
        assert all(0 < v <= 1.0 for v in values)
        assert values == sorted(values, reverse=True)  # more GPUs never scale better


def test_efficiency_rises_with_bandwidth_and_overlap_and_falls_with_latency() -> None:
    def at(**changes: float) -> float:
        return model.efficiency(FULL_13B, 256, replace(HW, nics_per_node=1, **changes))

    bandwidths = [at(nic_bw=bw) for bw in (12.5e9, 25e9, 50e9, 100e9)]
    assert bandwidths == sorted(bandwidths) and bandwidths[0] < bandwidths[-1]
    overlaps = [at(overlap=f) for f in (0.0, 0.5, 1.0)]
    assert overlaps == sorted(overlaps) and overlaps[0] < overlaps[-1]
    assert at(latency_s=1e-3) < at(latency_s=1e-6)


def test_full_overlap_hides_communication_only_up_to_the_compute() -> None:
    hw = replace(HW, overlap=1.0, nics_per_node=1)
    compute, comm = model.compute_s(FULL_13B, hw), model.comm_s(FULL_13B, 64, hw)
    assert comm > compute  # this case is bandwidth-bound
    assert model.step_s(FULL_13B, 64, hw) == pytest.approx(comm)
    assert model.efficiency(FULL_13B, 64, hw) == pytest.approx(compute / comm)


def test_lora_gradients_are_small_so_it_scales_better_than_full_fine_tuning() -> None:
    hw = replace(HW, nics_per_node=1)
    assert model.efficiency(LORA, 256, hw) > model.efficiency(
        replace(LORA, trainable_params=8e9), 256, hw
    )


def test_calibration_reproduces_the_measured_sizes() -> None:
    work = model.Workload("tiny", 1e6, 1e6, 2, 500, 6e6, grad_bytes=4)
    # measured: 1 worker 0.1 s/step (10% data wait); 2 workers 0.15 s with 30% in collectives
    document = {
        "sizes": [
            {"workers": 1, "global_batch": 16, "samples_per_s": 160.0, "data_wait_share": 0.1,
             "comm_share": 0.0, "efficiency": 1.0},
            {"workers": 2, "global_batch": 32, "samples_per_s": 32 / 0.15,
             "data_wait_share": 0.1, "comm_share": 0.3, "efficiency": 0.7},
        ]
    }  # fmt: skip
    hw = model.calibrate(document, work, model.Hardware(gpus_per_node=1, nics_per_node=1))
    assert model.compute_s(work, hw) == pytest.approx(0.09)
    assert model.comm_s(work, 2, hw) == pytest.approx(0.045)
    assert hw.nvlink_bw == pytest.approx(2 * 0.5 * 4e6 / 0.045)  # 2 (n-1)/n x 4 MB (fp32 grads)
    assert math.isclose(model.efficiency(work, 2, hw), 0.09 / 0.135)
    with pytest.raises(ValueError, match="no sizes"):
        model.calibrate({"sizes": []}, work, HW)
