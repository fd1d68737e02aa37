"""Services on the head node that workers talk to: the collector (metrics, files, checkpoint
commits, the stop flag) and the shard server. Each runs as a 0-CPU Ray actor pinned to the head."""
