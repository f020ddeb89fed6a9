"""Reading .safetensors files as float32 numpy arrays, tensor by tensor, memory-mapped.

Never unpickles: .ckpt/.pt/.bin/.pth files are refused (unpickling runs arbitrary code).
fp32/fp16 (and the integer buffers some checkpoints carry) go through `safetensors.safe_open`
(framework="numpy"); bf16, which numpy has no dtype for, is read from the memory-mapped bytes
and widened to float32 (bf16 is the upper half of a float32).
"""

from __future__ import annotations

import json
import math
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
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise WeightsError(f"{self.path}: not a safetensors file (its header is not JSON); "
                                   "pass a .safetensors file") from None
        if not isinstance(header, dict):
            raise WeightsError(f"{self.path}: not a safetensors file (its header is a JSON {type(header).__name__}, "
                               "not an object); pass a .safetensors file")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise WeightsError(f"{self.path}: corrupt header (__metadata__ is not an object); re-download it")
        base = 8 + n
        infos = {}
        for name, h in header.items():
            try:
                dtype, shape, (s, e) = h["dtype"], tuple(h["shape"]), h["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise WeightsError(f"{self.path}: corrupt header entry for {name!r}; re-download it") from None
            if not all(type(d) is int and d >= 0 for d in shape) or not all(type(o) is int for o in (s, e)):
                raise WeightsError(f"{self.path}: corrupt header: tensor {name} has shape {list(shape)} and offsets "
                                   f"{[s, e]} (not non-negative integers); re-download it")
            if dtype not in _DTYPE_BYTES:
                raise WeightsError(f"{self.path}: tensor {name} has dtype {dtype}, which is not supported; "
                                   "save the checkpoint as fp32, fp16 or bf16")
            if dtype.startswith("F8"):
                raise WeightsError(f"{self.path}: tensor {name} is {dtype} (8-bit float), which is not supported; "
                                   "use the fp32, fp16 or bf16 release of the checkpoint")
            count = math.prod(shape)  # Python integers: a product past int64 is a number, not an overflow
            if count * _DTYPE_BYTES[dtype] > size:
                raise WeightsError(f"{self.path}: corrupt header: tensor {name} has shape {list(shape)} "
                                   f"({count:,} values), more than the file's {size:,} bytes hold; re-download it")
            if e - s != count * _DTYPE_BYTES[dtype]:
                raise WeightsError(f"{self.path}: corrupt header: tensor {name} has {e - s} bytes for shape "
                                   f"{list(shape)} {dtype}; re-download it")
            infos[name] = TensorInfo(dtype, shape, base + s, base + e)
        end = base  # the tensors' data must tile the rest of the file, in order (safetensors' own rule)
        for name, info in sorted(infos.items(), key=lambda item: (item[1].start, item[1].end)):
            if info.start != end:
                what = "overlaps the tensor before it" if info.start < end else "leaves a gap before it"
                raise WeightsError(f"{self.path}: corrupt header: tensor {name}'s data offsets "
                                   f"[{info.start - base}, {info.end - base}] {what}; re-download it")
            end = info.end
        if end > size:
            raise WeightsError(f"{self.path}: truncated (the header promises {end} bytes, the file has "
                               f"{size}); re-download it")
        if end < size:
            raise WeightsError(f"{self.path}: corrupt (the header describes {end} bytes, the file has {size}); "
                               "re-download it")
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
        try:
            if self._handle is None:
                from safetensors import safe_open

                self._handle = safe_open(str(self.path), framework="numpy")
            array = self._handle.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - the library's SafetensorError / OSError: one line
            raise WeightsError(f"{self.path}: cannot read tensor {name} ({' '.join(str(exc).split())[:120]}); "
                               "re-download it") from exc
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
