"""On-disk formats that the launcher, the head and the workers share, torch-free: shards and
their manifest, checkpoints and their commit, run-directory names, the metrics records, durable
writes."""
