"""The official IMM checkpoints (github.com/lumalabs/imm) as checkpoints of this project, the yardstick for our
network, samplers and FID: the reading of the official files and the mapping of their weights onto ours
(`imm.import_official` makes checkpoints of them: `imm-orch import --from official-cifar10 PATH --out DIR`).

The official file is a pickle of {'ema': network, ...} written by EDM's `torch_utils.persistence`, which embeds the
network's source code and executes it on loading. We read it without the official code and without executing
anything from the file: persistent objects become plain records of their state, and a pickle may call only the
exact functions and classes of `_Reader.ALLOWED` (tensors, storages, containers, numpy arrays); anything else it
names becomes a record too. A storage's bytes are read by `torch.load(weights_only=True)`, not by torch's own
`torch.storage._load_from_bytes`, which unpickles them without limits. A state dict saved with `torch.save` (keys
as the official network names them) is read as well.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

OFFICIAL_PREFIX = "model."  # IMMPrecond.model is the U-Net or DiT; ours is OneStepModel.net
BOX_FILTER = torch.full((1, 1, 2, 2), 0.25)  # the official [1, 1] resampling filter, as a buffer of every resampler


class Record(dict):
    """A persistent object of the pickle (or any class we do not build): its state (and items), nothing else."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.class_name = ""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _persistent(meta: dict) -> Record:
    record = Record()
    record.class_name = meta.get("class_name", "")
    record.__setstate__(meta.get("state") or {})
    return record


def _storage_from_bytes(data: bytes):
    """`torch.storage._load_from_bytes` (how a pickled tensor's storage is read) with torch's weights-only unpickler:
    torch's own reads these bytes with `weights_only=False`, which runs whatever they name."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise pickle.UnpicklingError(f"a tensor's storage names {named.group(1) if named else 'more than data'}, "
                                     "which is refused: only data is read") from None


class _Reader(pickle.Unpickler):
    """Builds tensors, numpy arrays and plain containers; every other class becomes a Record (no code from the file
    runs). Only exact (module, name) pairs: a whole package would let a file call any of its functions, some of
    which run a string."""

    REPLACED = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    }
    ALLOWED = frozenset({
        ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"), ("torch", "Size"), ("torch", "device"),
        *(("torch", dtype) for dtype in ("float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16",
                                         "int32", "int64", "bool")),
        ("collections", "OrderedDict"), ("collections", "defaultdict"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"), ("copyreg", "_reconstructor"),
        *(("builtins", name) for name in ("object", "dict", "list", "tuple", "set", "frozenset", "int", "float",
                                          "complex", "str", "bytes", "bytearray", "bool", "slice", "range")),
    })

    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol 2's names
        if (module, name) in self.REPLACED:
            return self.REPLACED[(module, name)]
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        return Record


def _tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """A module tree's parameters and buffers by dotted name: from Records, real nn.Modules or nested dicts."""
    state = obj.__dict__ if hasattr(obj, "__dict__") else {}
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                out[prefix + name] = value.detach() if isinstance(value, Tensor) else value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out |= _tensors(child, f"{prefix}{name}.")
    return out


def file_bytes(path: str | Path) -> bytes:
    if not Path(path).is_file():
        raise FileNotFoundError(f"path: no file at {path} (the official checkpoint, which you download yourself)")
    return Path(path).read_bytes()


def read_official(path: str | Path, raw: bytes | None = None) -> dict[str, Tensor]:
    """The EMA network's tensors (official names) from the official pickle or from a torch.save'd state dict
    (`raw`: the file's bytes, when the caller has read them already)."""
    raw = file_bytes(path) if raw is None else raw
    try:
        with warnings.catch_warnings():  # torch's note on a raw pickle's protocol: not a state dict, read below
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:
        state = None
    if isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values()):
        return dict(state)
    try:
        data = _Reader(io.BytesIO(raw)).load()
    except Exception as e:
        why = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: neither a state dict nor an official IMM pickle ({type(e).__name__}: {why})") from None
    net = data.get("ema") if isinstance(data, dict) else None
    if net is None:
        raise ValueError(f"{path}: an official IMM checkpoint holds a dict with the EMA network under 'ema'; "
                         f"this file holds {type(data).__name__} {sorted(data)[:5] if isinstance(data, dict) else ''}")
    return _tensors(net)


def official_to_ours(official: dict[str, Tensor], model: torch.nn.Module, arch: str = "ddpmpp"
                     ) -> OrderedDict[str, Tensor]:
    """Rename official keys onto `model` (a OneStepModel over DDPMpp or DiT) and check every key and shape."""
    ours = model.state_dict()
    mapped: OrderedDict[str, Tensor] = OrderedDict()
    unexpected = []
    for key, value in official.items():
        if key.endswith("resample_filter"):  # a constant: our resampling is the same box filter, built in
            if not torch.allclose(value.float(), BOX_FILTER):
                raise ValueError(f"{key}: the network resamples with another filter than [1, 1]; "
                                 "model.arch=ddpmpp implements the [1, 1] filter only")
            continue
        name = "net." + key[len(OFFICIAL_PREFIX):] if key.startswith(OFFICIAL_PREFIX) else key
        if name not in ours:
            unexpected.append(key)
        elif ours[name].shape != value.shape:
            raise ValueError(f"{key}: shape {list(value.shape)} where model.arch={arch} has {list(ours[name].shape)}; "
                             "the checkpoint's network is not the configured one")
        else:
            mapped[name] = value.to(ours[name].dtype)
    missing = [k for k in ours if k not in mapped and k != "sigma_d"]
    if unexpected or missing:
        raise ValueError(f"the official network and model.arch={arch} differ: {len(unexpected)} unexpected key(s) "
                         f"{unexpected[:3]}, {len(missing)} missing {missing[:3]}")
    mapped["sigma_d"] = ours["sigma_d"]
    return mapped
