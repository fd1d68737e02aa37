"""A SkyPilot task: `num_nodes` GPU nodes in the ftlaunch image, Ray started on them (the first
node is the head), then `ftlaunch run` on the head. Pure.

Run it with `sky launch task.yaml --secret RAY_AUTH_TOKEN` (or `sky jobs launch` for a managed
job; with --spot it recovers from preemptions). The token and the job's `cluster.secret_env`
are SkyPilot secrets: passed from the launching shell, never written into the task.
"""

from __future__ import annotations

import math
from typing import Any

from launcher.errors import UserError
from launcher.render.common import (
    JOB_PATH,
    RAY_PORT,
    RenderContext,
    job_yaml,
    resources_flag,
    run_command,
    secret_env,
    write_file_command,
)
from launcher.render.shape import GIB

PREEMPTED_EXIT_CODE = 3  # launcher/errors.py: a preemption checkpoint was committed
JOIN_TIMEOUT_S = 600
HEREDOC_END = "FTLAUNCH_JOB_YAML"


def render_skypilot(ctx: RenderContext) -> list[dict[str, Any]]:
    """The task as one YAML document."""
    shape, o = ctx.shape, ctx.options
    resources: dict[str, Any] = {
        "cpus": f"{shape.cpus}+",
        "memory": f"{math.ceil(shape.memory / GIB)}+",
        "image_id": f"docker:{o.image}",
    }
    if shape.gpus:
        if not o.gpu_type:
            raise UserError("--gpu-type: skypilot needs the accelerator name, e.g. H100 or A100")
        resources["accelerators"] = f"{o.gpu_type}:{shape.gpus}"
    if o.instance_type:
        resources["instance_type"] = o.instance_type
    if o.region:
        resources["region"] = o.region
    if o.spot:
        resources["use_spot"] = True
        # A managed job comes back on new spot capacity after a preemption, and also when
        # ftlaunch stopped on SIGTERM after committing its preemption checkpoint (exit 3).
        resources["job_recovery"] = {
            "strategy": "EAGER_NEXT_REGION",
            "max_restarts_on_errors": 0,
            "recover_on_exit_codes": [PREEMPTED_EXIT_CODE],
        }
    return [
        {
            "name": ctx.name,
            "num_nodes": shape.nodes,
            "resources": resources,
            "envs": {"RAY_AUTH_MODE": "token"},
            "secrets": {name: None for name in ["RAY_AUTH_TOKEN", *secret_env(ctx.job)]},
            "setup": setup_script(job_yaml(ctx.job)),
            "run": run_script(ctx),
        }
    ]


def setup_script(job_text: str) -> str:
    """Writes the job file on every node: a quoted here-document, so it reads as the job;
    base64 in the one case where the job's text holds the document's end marker."""
    if HEREDOC_END in job_text:
        return write_file_command(job_text, JOB_PATH) + "\n"
    return f"mkdir -p ~/ftlaunch\ncat > {JOB_PATH} <<'{HEREDOC_END}'\n{job_text}{HEREDOC_END}\n"


def run_script(ctx: RenderContext) -> str:
    """Every node runs this: node 0 starts the Ray head (SkyPilot's own Ray uses another port),
    waits for all nodes and runs the job; the others join and return, leaving Ray running."""
    nodes = ctx.shape.nodes
    lines = [
        "set -eo pipefail",
        'HEAD_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n1)',
        "GPUS=${SKYPILOT_NUM_GPUS_PER_NODE:-0}",
        'if [ "$SKYPILOT_NODE_RANK" = "0" ]; then',
        "  ray stop >/dev/null 2>&1 || true",  # a recovered or re-run task starts afresh
        f'  ray start --head --port={RAY_PORT} --num-gpus="$GPUS" --disable-usage-stats'
        + resources_flag(ctx),
        f"  python -m cluster.slurm.node wait auto {nodes} --timeout {JOIN_TIMEOUT_S}",
        f"  {run_command(JOB_PATH)}",
        "else",
        "  ray stop >/dev/null 2>&1 || true",
        "  for attempt in $(seq 1 60); do  # the head may still be starting",
        f'    ray start --address="$HEAD_IP:{RAY_PORT}" --num-gpus="$GPUS" --disable-usage-stats'
        f"{resources_flag(ctx)} && exit 0",
        "    sleep 5",
        "  done",
        f'  echo "error: cannot join the Ray head at $HEAD_IP:{RAY_PORT}" >&2',
        "  exit 1",
        "fi",
    ]
    return "\n".join(lines) + "\n"
