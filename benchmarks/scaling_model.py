"""An analytic model of data-parallel scaling efficiency, for GPU counts no test here can reach.

Per optimizer step, on each of n GPUs with the same work per GPU (weak scaling):

- compute: flops_per_token x tokens per GPU step / (peak FLOP/s x MFU); flops_per_token is
  6 x params for full fine-tuning (2 forward, 4 backward), plus attention, and less with PEFT
  (launcher/plan/advice.py:flops_per_token computes it for a job).
- communication, by ZeRO stage: stages 0-2 reduce the gradients (an all-reduce, or a
  reduce-scatter plus the all-gather of the updated shard: the same bytes), about 2 x the
  gradient bytes per rank; stage 3 (and FSDP full shard) also all-gathers the weights for the
  forward and again for the backward: about 3 x. Each collective costs what a ring costs:
  an all-reduce of S bytes 2 (n-1)/n x S / bandwidth + 2 (n-1) x latency, a reduce-scatter or an
  all-gather half of that, and the latency is paid once per bucket of `bucket_elements`.
- bandwidth: inside one node (n <= gpus_per_node) the GPU-to-GPU links (NVLink); across nodes
  the node's injection bandwidth (NICs per node x NIC speed: a ring's traffic leaves and enters
  each node once per channel, and NCCL runs one channel per NIC), never more than NVLink.
- overlap: the share of the communication hidden behind compute (bucketed all-reduce during
  backward, prefetched ZeRO-3 gathers), at most the compute itself.

step(n) = compute + comm(n) - min(overlap x comm(n), compute); efficiency(n) = step(1) / step(n)
(1.0 at n = 1, where there is no collective).

`--calibrate scale.json` fits the two free figures to what `ftlaunch scale-test` measured: the
effective FLOP/s (peak x MFU) from the smallest size's compute time, and the effective bandwidth
from the largest size's communication time (overlap 0: what was measured is the exposed part),
then predicts efficiency for the measured sizes next to the measured one, and beyond.

Run:
    python benchmarks/scaling_model.py                      # example configs + Llama 7B/13B shapes
    python benchmarks/scaling_model.py --calibrate DIR/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPU_COUNTS = (8, 16, 32, 64, 128, 256, 512, 1024)
H100_BF16_FLOPS = 989e12  # dense bf16, SXM (NVIDIA's H100 datasheet)
NVLINK_H100 = 450e9  # bytes/s per GPU and direction (NVLink 4: 900 GB/s both ways)
DEEPSPEED_BUCKET = 5e8  # elements: DeepSpeed's default reduce_bucket_size / allgather_bucket_size


@dataclass(frozen=True)
class Hardware:
    """The machines: compute per GPU, links, and how much communication compute hides."""

    peak_flops: float = H100_BF16_FLOPS
    mfu: float = 0.4
    gpus_per_node: int = 8
    nvlink_bw: float = NVLINK_H100  # bytes/s inside a node
    nic_bw: float = 400e9 / 8  # bytes/s of one NIC (400 Gb/s InfiniBand)
    nics_per_node: int = 8
    latency_s: float = 5e-6  # per ring hop
    overlap: float = 0.5
    bucket_elements: float = DEEPSPEED_BUCKET

    def bandwidth(self, n: int) -> float:
        """Bytes/s a ring of `n` GPUs moves per GPU: NVLink inside a node, else the node's NICs."""
        if n <= self.gpus_per_node:
            return self.nvlink_bw
        return min(self.nic_bw * self.nics_per_node, self.nvlink_bw)


@dataclass(frozen=True)
class Workload:
    """One job, per GPU and per optimizer step."""

    name: str
    params: float
    trainable_params: float
    zero_stage: int
    tokens_per_gpu_step: float
    flops_per_token: float
    grad_bytes: int = 2  # bf16 gradients and gathered weights
    # ZeRO-3: all-gathers of the weights per step: forward and backward of every micro-batch
    # (and the recomputed forward under gradient checkpointing)
    gathers_per_step: int = 2


def ring_allreduce_s(size_bytes: float, n: int, bandwidth: float, latency_s: float) -> float:
    """Seconds for a ring all-reduce of `size_bytes` over `n` ranks."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * size_bytes / bandwidth + 2 * (n - 1) * latency_s


def comm_bytes(work: Workload, n: int) -> float:
    """Bytes each rank sends per step: ~2x the gradients at stages 0-2, ~3x at stage 3 (one
    micro-batch per step; each further one gathers the weights again)."""
    if n <= 1:
        return 0.0
    share = (n - 1) / n
    grads = work.trainable_params * work.grad_bytes
    if work.zero_stage < 3:
        return 2 * share * grads
    return share * (grads + work.gathers_per_step * work.params * work.grad_bytes)


def comm_s(work: Workload, n: int, hw: Hardware) -> float:
    """Seconds of collectives per step on `n` GPUs (ring costs, latency once per bucket)."""
    if n <= 1:
        return 0.0
    bw = hw.bandwidth(n)
    grads = work.trainable_params * work.grad_bytes
    buckets = max(1, math.ceil(work.trainable_params / hw.bucket_elements))
    # a reduce-scatter is half an all-reduce; an all-reduce of the gradients is two halves
    seconds = ring_allreduce_s(grads, n, bw, hw.latency_s * buckets)
    if work.zero_stage == 3:
        seconds /= 2  # the gradients are only reduce-scattered
        weights = work.params * work.grad_bytes
        gathers = max(1, math.ceil(work.params / hw.bucket_elements))
        one_gather = ring_allreduce_s(weights, n, bw, hw.latency_s * gathers) / 2
        seconds += work.gathers_per_step * one_gather
    return seconds


def compute_s(work: Workload, hw: Hardware) -> float:
    return work.flops_per_token * work.tokens_per_gpu_step / (hw.peak_flops * hw.mfu)


def step_s(work: Workload, n: int, hw: Hardware) -> float:
    compute, comm = compute_s(work, hw), comm_s(work, n, hw)
    return compute + comm - min(hw.overlap * comm, compute)


def efficiency(work: Workload, n: int, hw: Hardware) -> float:
    """Weak-scaling efficiency: per-GPU throughput on `n` GPUs over one GPU's."""
    return step_s(work, 1, hw) / step_s(work, n, hw)


def tokens_per_s_per_gpu(work: Workload, n: int, hw: Hardware) -> float:
    return work.tokens_per_gpu_step / step_s(work, n, hw)


def calibrate(document: dict[str, Any], work: Workload, hw: Hardware) -> Hardware:
    """`hw` with the effective FLOP/s and bandwidth that reproduce a scale-test's scale.json:
    compute = the smallest size's mean step time less its data wait and communication;
    bandwidth = the largest size's collective bytes over its communication time (all exposed).

    Raises:
        ValueError: the document has no sizes.
    """
    sizes = document["sizes"]
    if not sizes:
        raise ValueError("scale.json holds no sizes")
    base, top = sizes[0], sizes[-1]
    compute = mean_step_s(base) * (1 - base["data_wait_share"] - base["comm_share"])
    flops = work.flops_per_token * work.tokens_per_gpu_step / compute
    fitted = replace(hw, peak_flops=flops, mfu=1.0, overlap=0.0, latency_s=0.0)
    n = top["workers"]
    exposed = top["comm_share"] * mean_step_s(top)
    if n > 1 and exposed > 0:
        per_second = comm_s(work, n, replace(fitted, nvlink_bw=1.0, nic_bw=1.0))
        bandwidth = per_second / exposed  # comm_s is bytes-proportional at latency 0
        fitted = replace(fitted, nvlink_bw=bandwidth, nic_bw=bandwidth / fitted.nics_per_node)
    return fitted


def mean_step_s(size: dict[str, Any]) -> float:
    """A measured size's mean step time (what its throughput and shares are averaged over)."""
    return size["global_batch"] / size["samples_per_s"]


def measured_workload(document: dict[str, Any]) -> Workload:
    """The workload a scale.json measured: its model's size and its tokens per worker step."""
    model = document["model"]
    base = document["sizes"][0]
    tokens_per_step = base["tokens_per_s"] / base["workers"] * mean_step_s(base)
    return Workload(
        name=document["config"],
        params=model["total_params"],
        trainable_params=model["trainable_params"],
        zero_stage=model["zero_stage"],
        tokens_per_gpu_step=tokens_per_step,
        flops_per_token=6 * model["trainable_params"],
        grad_bytes=4 if model.get("precision", "fp32") == "fp32" else 2,
    )


def llama_shape(name: str, params: float, layers: int, hidden: int, seq: int) -> Workload:
    """A Llama-shaped full fine-tune, ZeRO-3, bf16, 2 sequences of `seq` tokens per GPU step
    (the 13B row of LLM Foundry's H100 table: micro-batch 2, no accumulation, FULL_SHARD);
    attention adds 12 x layers x hidden x seq FLOPs per token (forward and backward)."""
    return Workload(name, params, params, 3, 2 * seq, 6 * params + 12 * layers * hidden * seq)


def example_workloads() -> list[Workload]:
    """The example configs whose model shape is known here (config.json copies used by the
    planner's tests), sized as `ftlaunch plan` sizes them."""
    sys.path.insert(0, str(ROOT))
    from launcher.config_loading import load_job_config
    from launcher.plan.advice import flops_per_token
    from launcher.plan.architecture import read_architecture
    from launcher.plan.memory import weight_bytes
    from launcher.plan.peft_params import trainable_params

    shapes = ROOT / "tests" / "unit" / "launcher" / "architectures"
    examples = {
        "llama-3.1-8b-full-2x8.yaml": "llama-3.1-8b",
        "llama-3.1-70b-lora-4x8.yaml": "llama-3.1-70b",
        "qwen2.5-0.5b-lora-1gpu.yaml": "qwen2.5-0.5b",
    }
    found = []
    for config, shape in examples.items():
        job = load_job_config(ROOT / "configs" / "examples" / config)
        arch = read_architecture(_config_dir(shapes / f"{shape}.json"), job.model.task, 2)
        t = job.training
        stage = 3 if job.engine.strategy == "fsdp" else job.engine.zero_stage
        found.append(
            Workload(
                name=config,
                params=arch.params,
                trainable_params=trainable_params(job.peft, arch, job.model.task),
                zero_stage=stage,
                tokens_per_gpu_step=t.micro_batch_size * t.grad_accum * job.data.max_length,
                flops_per_token=flops_per_token(job, arch),
                grad_bytes=weight_bytes(job),
                gathers_per_step=(3 if t.gradient_checkpointing else 2) * t.grad_accum,
            )
        )
    return found


def _config_dir(config_json: Path) -> Path:
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="scaling-model-"))
    shutil.copyfile(config_json, directory / "config.json")
    return directory


def prediction_table(works: list[Workload], hw: Hardware, counts: tuple[int, ...]) -> str:
    header = f"{'workload':<34}" + "".join(f"{n:>8}" for n in counts) + "  tok/s/GPU@8"
    lines = [header]
    for work in works:
        cells = "".join(f"{efficiency(work, n, hw):>8.1%}" for n in counts)
        lines.append(f"{work.name:<34}{cells}  {tokens_per_s_per_gpu(work, 8, hw):>10,.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", type=Path, help="a scale.json from ftlaunch scale-test")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args()
    if args.calibrate:
        document = json.loads(args.calibrate.read_text())
        work = measured_workload(document)
        hw = calibrate(document, work, Hardware(gpus_per_node=1, nics_per_node=1))
        print(f"calibrated: {hw.peak_flops / 1e9:.2f} GFLOP/s per worker, "
              f"{hw.nvlink_bw / 1e9:.3f} GB/s ring bandwidth")  # fmt: skip
        for size in document["sizes"]:
            n = size["workers"]
            print(
                f"{n} workers: measured {size['efficiency']:.1%}, model {efficiency(work, n, hw):.1%}"
            )
        print(prediction_table([work], hw, GPU_COUNTS))
        return
    base = Hardware(mfu=args.mfu, overlap=args.overlap)
    works = [
        *example_workloads(),
        llama_shape("llama-7b shape (seq 2048, ZeRO-3)", 6.74e9, 32, 4096, 2048),
        llama_shape("llama-13b shape (seq 2048, ZeRO-3)", 13.0e9, 40, 5120, 2048),
    ]
    for title, hw in [
        ("H100, 8 x 400 Gb/s InfiniBand per node (one NIC per GPU)", base),
        ("H100, 1 x 400 Gb/s InfiniBand per node", replace(base, nics_per_node=1)),
    ]:
        print(f"\n{title}; MFU {hw.mfu}, overlap {hw.overlap}: efficiency vs 1 GPU")
        print(prediction_table(works, hw, GPU_COUNTS))


if __name__ == "__main__":
    main()
