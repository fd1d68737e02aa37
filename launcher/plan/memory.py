"""Per-rank memory of a job, component by component (pure).

Model states follow the ZeRO paper's accounting for Adam: weights in the training dtype, their
gradients, and the optimizer's fp32 master copy plus two moments; ZeRO stage 1 partitions the
optimizer states over the ranks, stage 2 also the gradients, stage 3 also the weights. For full
fine-tuning in bf16 under ZeRO-3 that is (2 + 2 + 12) x params / ranks = 16 P / N bytes.

What each engine really does on top, written down where it differs:
- DeepSpeed in fp32 still keeps its own fp32 copy of each partition for ZeRO >= 1 (so 12 bytes of
  optimizer state per trainable parameter either way); stage 0 in fp32 steps torch's AdamW on
  the parameters themselves (8 bytes).
- Accelerate's DDP and FSDP paths keep fp32 parameters whatever training.precision says (they are
  the master weights there).
- Temporary buffers, alive in forward and backward: DeepSpeed's gradient bucket (under ZeRO-2
  also a micro-batch's gradients before partitioning; under ZeRO-3 the parameters gathered for
  the blocks being computed), sized by EngineConfig.zero_buckets; DDP's gradient buckets; FSDP's
  gathered blocks. The optimizer step's scratch tensors are a separate, later peak.
- On CPU workers the measured quantity is the process's peak resident memory, so the plan adds
  the fixed cost of the imported frameworks and the run's data readers (CPU_FIXED_BYTES,
  measured). On GPU workers it is torch's `max_memory_allocated`, which excludes the CUDA
  context; the fit check adds GPU_RESERVE for that.
- Checkpoints (when training.checkpoint_every is set): each save copies this rank's part into a
  shared-memory pool that a saver process writes from (trainer/engines/background.py). The pool is
  allocated at the first save and kept, so from then on host memory holds, per rank, the
  optimizer states (DeepSpeed's file: fp32 master copy and moments, 12 bytes per trainable
  parameter, partitioned from ZeRO-1), the weights file of ZeRO 0-2 (written by rank 0, the
  worst case) and the best-so-far weights (a ZeRO-3 partition). Accelerate writes its own files
  directly: only its best weights go through the pool. On CPU workers that is the measured
  memory, so it adds to the peak; on GPU workers it is host memory next to the GPU's.
- Loading: under DeepSpeed (all stages) rank 0 reads the whole checkpoint into host memory before
  the weights are copied in (transformers' loader), FSDP's rank 0 holds the full model while it
  sends the shards; this phase happens before the optimizer states exist.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from launcher.plan.architecture import Architecture
from launcher.plan.peft_params import trainable_params
from trainer.config import JobConfig

# Measured on this project's CPU workers (torch 2.13, transformers 5, DeepSpeed 0.19, Ray 2.60;
# benchmarks/plan_accuracy.py): resident memory of a Ray worker that has imported the training
# stack and read its first batches, before the model's own tensors.
CPU_FIXED_BYTES = 660 * 2**20
# ZeRO-3's partitioning machinery (zero.Init's hooks, the parameter coordinator) on top of that.
ZERO3_FIXED_BYTES = 48 * 2**20
# torch's AdamW step on CPU goes tensor by tensor and allocates two fp32 temporaries the size of
# the tensor it steps (sqrt(v), and that over the bias correction): 8 bytes per element of the
# largest tensor. On GPU it steps all tensors of a group at once (foreach) with one temporary:
# 4 bytes per element of everything stepped. DeepSpeed ZeRO-1/2 steps its flat fp32 partition as
# one tensor, ZeRO-3 each sub-group, plus an fp32 copy of the gradients (4 bytes).
STEP_SCRATCH_BYTES = {"cpu": 8, "gpu": 4}
ZERO3_SUB_GROUP = 10**9  # DeepSpeed's default sub_group_size (elements)
# Not in max_memory_allocated: the CUDA context and NCCL buffers, plus allocator fragmentation.
GPU_RESERVE_BYTES = 2 * 2**30
GPU_FRAGMENTATION = 0.05


@dataclass(frozen=True)
class Layout:
    """Where the ranks run: how many, how many share a node, on which device."""

    world: int
    workers_per_node: int
    device: str  # "cpu" or "gpu"


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank needs, by component. `peak_bytes` is what the run measures.

    Training has two peaks: backward, holding the activations and the communication buffers
    (gathered weights, gradient buckets), and the optimizer step, holding its scratch tensors;
    the larger one counts. Loading comes before both, before the optimizer states exist.
    """

    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    temporary_bytes: int  # communication buffers alive in forward and backward
    step_bytes: int  # the optimizer step's scratch tensors
    overhead_bytes: int
    load_bytes: int  # host memory of rank 0 while loading (the checkpoint, or the full model)
    offloaded_bytes: int  # host memory per rank holding what offload moved off the GPU
    device: str
    snapshot_bytes: int = 0  # host memory per rank of the checkpoint snapshot pool

    @property
    def model_states_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def peak_bytes(self) -> int:
        transient = max(self.activations_bytes + self.temporary_bytes, self.step_bytes)
        training = self.model_states_bytes + transient
        if self.device == "cpu":  # the snapshot pool lives on after the first save
            training += self.snapshot_bytes
        # Loading happens in host memory: on CPU workers that is the measured memory, on GPU
        # workers it is not.
        loading = self.weights_bytes + self.load_bytes if self.device == "cpu" else 0
        return self.overhead_bytes + max(training, loading)

    def components(self) -> dict[str, int]:
        """The components, largest first (for naming the dominant one)."""
        parts = {
            "weights": self.weights_bytes,
            "gradients": self.grads_bytes,
            "optimizer states": self.optimizer_bytes,
            "activations": self.activations_bytes,
            "temporary buffers": self.temporary_bytes,
            "optimizer step scratch": self.step_bytes,
            "framework overhead": self.overhead_bytes,
        }
        if self.device == "cpu":
            parts["loading the checkpoint on rank 0"] = self.load_bytes
            if self.snapshot_bytes:
                parts["checkpoint snapshot pool"] = self.snapshot_bytes
        return dict(sorted(parts.items(), key=lambda kv: -kv[1]))

    def as_json(self) -> dict[str, int | str]:
        return asdict(self) | {
            "model_states_bytes": self.model_states_bytes,
            "peak_bytes": self.peak_bytes,
        }


@dataclass(frozen=True)
class _States:
    """An engine's share of the rank's memory (everything but activations and overhead)."""

    weights: int
    grads: int
    optimizer: int
    buffers: int
    step: int
    load: int
    offloaded: int = 0


def weight_bytes(job: JobConfig) -> int:
    """Bytes per weight: DeepSpeed trains in training.precision; DDP and FSDP keep fp32."""
    mixed = job.training.precision != "fp32" and job.engine.runs_deepspeed()
    return 2 if mixed else 4


def plan_rank(job: JobConfig, arch: Architecture, layout: Layout) -> RankMemory:
    """The per-rank memory of `job` on `layout` (pure)."""
    params, trainable = arch.params, trainable_params(job.peft, arch, job.model.task)
    params += trainable if job.peft.method != "none" else 0  # adapters add to the model
    if job.engine.runs_deepspeed():
        states = _deepspeed_states(job, arch, params, trainable, layout)
    else:
        states = _accelerate_states(job, arch, params, trainable, layout)
    return RankMemory(
        weights_bytes=states.weights,
        grads_bytes=states.grads,
        optimizer_bytes=states.optimizer,
        activations_bytes=activation_bytes(job, arch),
        temporary_bytes=states.buffers,
        step_bytes=states.step,
        overhead_bytes=_fixed_bytes(job, layout),
        load_bytes=states.load,
        offloaded_bytes=states.offloaded,
        device=layout.device,
        snapshot_bytes=snapshot_bytes(job, trainable, layout.world),
    )


def snapshot_bytes(job: JobConfig, trainable: int, world: int) -> int:
    """Host memory of one rank's checkpoint snapshot pool (rank 0, the largest; see the module
    docstring); 0 when the job saves no checkpoints."""
    if job.training.checkpoint_every is None:
        return 0
    if not job.engine.runs_deepspeed():
        return trainable * 4  # the best weights only (DDP and FSDP keep fp32; whole: worst case)
    stage, bw = job.engine.zero_stage, weight_bytes(job)
    best = trainable * bw // (world if stage == 3 else 1)
    if job.engine.backend == "accelerate":  # Accelerate writes DeepSpeed's files itself
        return best
    optimizer = trainable * 12 // world if stage >= 1 else trainable * 8
    return optimizer + (0 if stage == 3 else trainable * bw) + best


def _fixed_bytes(job: JobConfig, layout: Layout) -> int:
    if layout.device != "cpu":
        return 0
    zero3 = job.engine.runs_deepspeed() and job.engine.zero_stage == 3
    return CPU_FIXED_BYTES + (ZERO3_FIXED_BYTES if zero3 else 0)


def _deepspeed_states(
    job: JobConfig, arch: Architecture, params: int, trainable: int, layout: Layout
) -> _States:
    stage, n, bw = job.engine.zero_stage, layout.world, weight_bytes(job)
    optim_per_param = 8 if stage == 0 and bw == 4 else 12  # see the module docstring
    optimizer = trainable * optim_per_param // (n if stage >= 1 else 1)
    step = _step_scratch(stage, arch, trainable, layout)
    offloaded = 0
    if job.engine.offload == "cpu" and layout.device == "gpu":  # the step runs on the host too
        host_step = _step_scratch(stage, arch, trainable, replace(layout, device="cpu"))
        offloaded, optimizer, step = optimizer + trainable * 4 // n + host_step, 0, 0
    return _States(
        weights=params * bw // (n if stage == 3 else 1),
        grads=trainable * bw // (n if stage >= 2 else 1),
        optimizer=optimizer,
        buffers=_deepspeed_buffers(job, arch, params, trainable, n) * bw,
        step=step,
        load=arch.checkpoint_bytes,
        offloaded=offloaded,
    )


def _deepspeed_buffers(
    job: JobConfig, arch: Architecture, params: int, trainable: int, n: int
) -> int:
    """Elements of DeepSpeed's communication buffers in forward and backward: the gradient
    bucket; under ZeRO-2 the gradients of a micro-batch, whole until they are partitioned;
    under ZeRO-3 the parameters gathered for the blocks being computed (at most the live limit,
    at least the largest block or tensor), the small ones kept whole, and the full gradient of
    the largest tensor before it is reduce-scattered."""
    stage = job.engine.zero_stage
    buckets = job.engine.zero_buckets(arch.hidden) if stage else {}
    bucket = min(buckets.get("reduce_bucket_size", trainable), trainable)
    if stage == 2:
        return bucket + trainable - trainable // n
    if stage < 3:
        return bucket
    live = buckets["stage3_max_live_parameters"] + buckets["stage3_prefetch_bucket_size"]
    persistent = _persistent_params(arch, buckets["stage3_param_persistence_threshold"])
    gathered = max(min(live, params), arch.block_params(), arch.largest_tensor())
    return bucket + gathered + persistent + arch.largest_tensor()


def _step_scratch(stage: int, arch: Architecture, trainable: int, layout: Layout) -> int:
    """The optimizer step's scratch (see STEP_SCRATCH_BYTES): torch's AdamW over the weights at
    stage 0; DeepSpeed's flat fp32 partition at stages 1-2, and each sub-group of it at stage 3,
    plus the fp32 copy of its gradients that DeepSpeed makes for the step."""
    per_element = STEP_SCRATCH_BYTES[layout.device]
    if stage == 0:
        return per_element * _stepped_at_once(arch, trainable, layout.device)
    partition = trainable // layout.world
    stepped = min(partition, ZERO3_SUB_GROUP) if stage == 3 else partition
    return (per_element + 4) * stepped


def _stepped_at_once(arch: Architecture, trainable: int, device: str) -> int:
    """Elements torch's AdamW steps at once: one tensor at a time on CPU, all of them on GPU."""
    return min(arch.largest_tensor(), trainable) if device == "cpu" else trainable


def _accelerate_states(
    job: JobConfig, arch: Architecture, params: int, trainable: int, layout: Layout
) -> _States:
    per_element = STEP_SCRATCH_BYTES[layout.device]
    scratch = per_element * _stepped_at_once(arch, trainable, layout.device)
    if job.engine.strategy == "ddp":  # every rank holds everything; DDP's buckets copy the grads
        return _States(params * 4, trainable * 4, trainable * 8, trainable * 4, scratch, 0)
    fsdp = job.engine.fsdp_options()
    shards = layout.workers_per_node if fsdp.sharding == "hybrid" else layout.world
    gathered = 2 * max(arch.block_params(), arch.largest_tensor()) * 4  # this block and the next
    states = _States(
        weights=params * 4 // shards,
        grads=trainable * 4 // shards,
        optimizer=trainable * 8 // shards,
        buffers=gathered,
        step=scratch // shards,
        load=params * 4,
    )
    if fsdp.cpu_offload and layout.device == "gpu":
        held = states.weights + states.grads + states.optimizer + states.step
        return _States(0, 0, 0, gathered, 0, states.load, offloaded=held)
    return states


def _persistent_params(arch: Architecture, threshold: int) -> int:
    """ZeRO-3 keeps parameters below the persistence threshold whole on every rank."""
    sizes = (math.prod(shape) for shape in arch.weights.values())
    return sum(size for size in sizes if size <= threshold)


def activation_bytes(job: JobConfig, arch: Architecture) -> int:
    """Activations kept for backward for one micro-batch of max_length tokens.

    Per token and transformer block: about 8 hidden-sized tensors (block input, normed inputs,
    q/k/v, attention output, residual) and 2 (plain MLP) or 4 (gated MLP) intermediate-sized
    ones; eager attention also keeps the heads x length score and probability matrices. With
    gradient checkpointing only each block's input is kept, plus one block recomputed in
    backward. A causal LM adds its logits, upcast to fp32, and their gradient.
    """
    t = job.training
    tokens = t.micro_batch_size * job.data.max_length
    element = 2 if weight_bytes(job) == 2 else 4
    gated = arch.model_type in ("llama", "mistral", "qwen2", "qwen3")
    per_token_block = 8 * arch.hidden + (4 if gated else 2) * arch.intermediate
    if job.model.attn_implementation == "eager":
        per_token_block += 2 * arch.heads * job.data.max_length
    if t.gradient_checkpointing:
        kept = tokens * (arch.layers * arch.hidden + 2 * per_token_block) * element
    else:
        kept = tokens * (arch.layers + 1) * per_token_block * element
    logits = 2 * tokens * arch.vocab * 4 if job.model.is_causal_lm() else 0
    return kept + logits
