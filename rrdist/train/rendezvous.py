"""torch.distributed's rendezvous store, listening on the rank-0 worker's Ray node address only.

Ray Train starts the process group through torch's env:// rendezvous, whose TCPStore listens on
every interface of the rank-0 worker's machine. Here rank 0 binds the store's socket to
MASTER_ADDR (the node's Ray address: 127.0.0.1 on a `cluster/local.sh` head, the cluster-internal
address on a cluster) and hands it to the TCPStore; the other ranks connect as before.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


def _address_bound_env_rendezvous(url: str, timeout: timedelta = timedelta(minutes=30), **kwargs):
    import torch.distributed as dist

    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    rank = int(query.get("rank", os.environ["RANK"]))
    world_size = int(query.get("world_size", os.environ["WORLD_SIZE"]))
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if rank == 0:
        sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(128)
        store = dist.TCPStore(addr, port, world_size, True, timeout, wait_for_workers=False,
                              master_listen_fd=sock.detach())  # the store owns the socket now
    else:
        store = dist.TCPStore(addr, port, world_size, False, timeout)
    yield store, rank, world_size
    raise RuntimeError("re-rendezvous is not supported by env://")


def use_address_bound_rendezvous() -> None:
    """In a training worker, before its process group starts: env:// binds rank 0's store to MASTER_ADDR."""
    import importlib

    # The module, not the function torch.distributed exports under the same name. torch registers
    # new schemes only; Ray Train always asks for env://, so its handler is replaced in place.
    handlers = importlib.import_module("torch.distributed.rendezvous")._rendezvous_handlers
    handlers["env"] = _address_bound_env_rendezvous


class _AddressBoundBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        worker_group.execute(use_address_bound_rendezvous)
        super().on_start(worker_group, backend_config)


class AddressBoundTorchConfig(TorchConfig):
    """Ray Train's TorchConfig whose rendezvous store listens on the node's Ray address only."""

    @property
    def backend_cls(self):
        return _AddressBoundBackend
