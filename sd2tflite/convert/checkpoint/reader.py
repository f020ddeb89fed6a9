"""Reading .safetensors files as float32 numpy arrays, tensor by tensor, memory-mapped.

Never unpickles: .ckpt/.pt/.bin/.pth files are refused (unpickling runs arbitrary code).
fp32/fp16 (and the integer buffers some checkpoints carry) go through `safetensors.safe_open`
(framework="numpy"); bf16, which numpy has no dtype for, is read from the memory-mapped bytes
and widened to float32 (bf16 is the upper half of a float32).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from sd2tflite.core.errors import WeightsError
from sd2tflite.core.fsutil import sha256_file

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: pickled PyTorch checkpoints are refused (unpickling runs arbitrary code); "
            "use the model's .safetensors release, or convert it once in a sandbox with "
            "`safetensors.torch.save_file(torch.load(path, weights_only=True)['state_dict'], "
            "'model.safetensors')`"
        )


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    """One .safetensors file: a checked header, and float32 tensors read one at a time."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        refuse_pickle(self.path)
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: no such file; check the path")
        self.infos, self.metadata = self._read_header()
        self._handle = None
        self._memmap = None

    def _read_header(self) -> tuple[dict[str, TensorInfo], dict]:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{self.path}: not a safetensors file (shorter than its header); "
                                   "re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                if n <= _MAX_HEADER:
                    raise WeightsError(f"{self.path}: truncated (the header alone needs {n + 8} bytes, "
                                       f"the file has {size}); re-download it")
                raise WeightsError(f"{self.path}: not a safetensors file (header length {n}); "
                                   "pass a .safetensors file")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise WeightsError(f"{self.path}: not a safetensors file (its header is not JSON); "
                                   "pass a .safetensors file") from None
        metadata = header.pop("__metadata__", None) or {}
        base = 8 + n
        infos = {}
        data_end = 0
        for name, h in header.items():
            try:
                dtype, shape, (s, e) = h["dtype"], tuple(int(d) for d in h["shape"]), h["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise WeightsError(f"{self.path}: corrupt header entry for {name!r}; re-download it") from None
            if dtype not in _DTYPE_BYTES:
                raise WeightsError(f"{self.path}: tensor {name} has dtype {dtype}, which is not supported; "
                                   "save the checkpoint as fp32, fp16 or bf16")
            if e - s != int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype]:
                raise WeightsError(f"{self.path}: corrupt header: tensor {name} has {e - s} bytes for shape "
                                   f"{list(shape)} {dtype}; re-download it")
            infos[name] = TensorInfo(dtype, shape, base + s, base + e)
            data_end = max(data_end, base + e)
        if data_end > size:
            raise WeightsError(f"{self.path}: truncated (the header promises {data_end} bytes, the file has "
                               f"{size}); re-download it")
        return infos, metadata

    def keys(self) -> list[str]:
        return list(self.infos)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.infos[name].shape

    def get(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array (integer buffers keep their integer type)."""
        info = self.infos[name]
        if info.dtype == "BF16":
            if self._memmap is None:
                self._memmap = np.memmap(self.path, dtype=np.uint8, mode="r")
            raw = np.frombuffer(self._memmap[info.start:info.end], dtype="<u2")
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="numpy")
        array = self._handle.get_tensor(name)
        if info.dtype in _FLOAT_DTYPES:
            return np.asarray(array, dtype=np.float32)
        return array

    def close(self) -> None:
        self._handle = None
        self._memmap = None

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)


def open_safetensors(path: Path | str) -> SafetensorsFile:
    return SafetensorsFile(path)
