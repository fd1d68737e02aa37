"""What Ray Train runs in each worker: wire Ray-backed reporter and sink into the trainer loop.

torch and the trainer are imported inside the function, so importing `cluster` stays light.
"""

from __future__ import annotations

from typing import Any

from cluster.collector import CollectorReporter, CollectorSink


def train_worker(loop_config: dict[str, Any]) -> None:
    from trainer.config.spec import RunSpec
    from trainer.loop import run_classification

    spec = RunSpec.model_validate(loop_config["spec"])
    collector = loop_config["collector"]
    run_classification(spec, CollectorReporter(collector), CollectorSink(collector))
