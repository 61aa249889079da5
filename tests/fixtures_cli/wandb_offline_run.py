"""Read an offline W&B run back from its ``run-<id>.wandb`` file (wandb 0.31 writes no config.yaml offline).

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
records, each with a 7-byte header (CRC32C, little-endian length, type: full/first/middle/last) and a
serialized ``wandb_internal.Record`` protobuf.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(path: str):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def read_run(run_dir: str) -> dict[str, Any]:
    """``{"id", "group", "name", "project", "config", "history"}`` of the offline run in ``run_dir``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    out: dict[str, Any] = {"config": {}, "history": []}
    for raw in _payloads(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, group=run.run_group, name=run.display_name, project=run.project)
            out["config"].update({i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"})
        elif kind == "config":
            for item in record.config.update:
                key = item.key or ".".join(item.nested_key)
                out["config"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(i.key or ".".join(i.nested_key)): json.loads(i.value_json)
                                   for i in record.history.item})
    return out


def offline_runs(wandb_dir: str) -> list[str]:
    """The offline run folders under ``wandb_dir/wandb``, oldest first."""
    return sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*")))
