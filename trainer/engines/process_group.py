"""Join the torch process group of a worker group, with a rendezvous store that listens on the
master address only.

Ray Train's own setup (`init_method` tcp:// or env://) has rank 0 start torch's TCPStore, which
listens on every interface (`::`) whatever the master address: for as long as training runs, a
port open to the whole network, without authentication, even on a laptop's loopback-only
embedded cluster. Here rank 0 binds the listening socket itself, to the master address, and hands
it to the store (`master_listen_fd`); the other ranks connect as clients, as before.
cluster/ray/process_group.py runs this in every worker in place of Ray Train's setup.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist
from torch.distributed import TCPStore  # pyright: ignore[reportPrivateImportUsage] (public API; the stubs do not re-export it)


def join_process_group(
    backend: str, rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float
) -> None:
    """`dist.init_process_group` through a TCPStore whose server (rank 0) listens on
    `master_addr` alone."""
    timeout = timedelta(seconds=timeout_s)
    if rank == 0:
        family = socket.AF_INET6 if ":" in master_addr else socket.AF_INET
        listener = socket.create_server((master_addr, master_port), family=family, backlog=128)
        store = TCPStore(
            master_addr,
            master_port,
            world_size,
            is_master=True,
            timeout=timeout,
            master_listen_fd=listener.detach(),  # the store owns the socket from here on
        )
    else:
        store = TCPStore(master_addr, master_port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
