"""Clients and partitions of a data set among them."""

from lightning_fedmut.data.client import Client, check_partitions, make_clients, train_val_split
from lightning_fedmut.data.leaf import LEAF_LETTERS, load_leaf
from lightning_fedmut.data.partition import (
    load_partition_json,
    partition_dirichlet,
    partition_iid,
    partition_shards,
    save_partition_json,
)

__all__ = [
    "LEAF_LETTERS",
    "Client",
    "check_partitions",
    "load_leaf",
    "load_partition_json",
    "make_clients",
    "partition_dirichlet",
    "partition_iid",
    "partition_shards",
    "save_partition_json",
    "train_val_split",
]
