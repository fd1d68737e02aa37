"""The thin worker-side agent: Ray-backed implementations of the trainer's protocols (reporter,
artifact and checkpoint sinks, shard store, stop signal) and the entry Ray Train runs."""
