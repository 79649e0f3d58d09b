"""A GGUF file's metadata and tensor table, read with every length checked.

The header is read here; what the tensors hold (the quantization types, their block sizes
and dequantization) stays with the `gguf` package. Why not `gguf.GGUFReader`: it builds a
NumPy view for every element of every metadata array, and Gemma's vocabulary lists hold
262,144 entries each: 19 s of a 44 s import of Gemma 3 270M on the 2-core machines; reading
the header here, the import takes 20 s (benchmarks/README.md, "Gemma 3 270M"). The file is untrusted input:
every string length, array count, dimension and tensor extent is checked against the bytes
that remain before it is used, so a damaged file is a `GGUFFormatError` naming the place,
never an allocation its header asks for.

Example:
    >>> f = GGUFFile("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> f.fields["general.architecture"], f.tensors[0].name  # doctest: +SKIP
    ('llama', 'token_embd.weight')
"""

from __future__ import annotations

import mmap
import struct
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 counted lengths in 32 bits; llama.cpp dropped it in 2023
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# GGUF metadata value types: the scalars' struct formats, then strings and arrays.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9
# Arrays of arrays nest at most this deep (llama.cpp writes none).
_MAX_NESTING = 4

# Tensor types the gguf package hands out as typed arrays (the rest as raw blocks).
_TYPED = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
          "I16": np.int16, "I32": np.int32, "I64": np.int64}
# A text value that is not UTF-8: the field is left out, as gguf's reader left it.
_UNDECODABLE = object()


class GGUFFormatError(ValueError):
    """A file that is not a well-formed GGUF file (the message says where)."""


class Tensor(NamedTuple):
    """One tensor of the file: `shape` fastest-varying first, as GGUF lists it; `data` a
    read-only view of its bytes as `gguf.GGUFReader` gives them (typed for float and
    integer types, rows of raw blocks for quantized ones)."""
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple
    data: np.ndarray


class GGUFFile:
    """The metadata (`fields`: name -> str, int, float, bool or list) and `tensors` of a
    GGUF file, read from a memory map (tensor data is read only when used).

    Args:
        path: the .gguf file.
    """

    def __init__(self, path: str):
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                raise GGUFFormatError("the file is empty") from None
        self._pos = 0
        if self._take(4) != MAGIC:
            raise GGUFFormatError("it does not start with the GGUF magic bytes")
        version = self._scalar("I")
        if version not in VERSIONS:
            hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
            raise GGUFFormatError(f"GGUF version {version}{hint} is not supported; "
                                  f"supported: {', '.join(map(str, VERSIONS))}")
        tensor_count, field_count = self._scalar("Q"), self._scalar("Q")
        # Every field takes at least 12 bytes, every tensor entry at least 24.
        self._check_count(field_count, 12, "metadata fields")
        self._check_count(tensor_count, 24, "tensors")
        self.fields: dict[str, Any] = {}
        for _ in range(field_count):
            at = self._pos
            key = self._string("a metadata key")
            if key in self.fields:
                raise GGUFFormatError(f"metadata key {key!r} appears twice")
            value = self._value(self._scalar("I"), key, 0)
            if value is not _UNDECODABLE:  # text that is not UTF-8: as if absent
                self.fields[key] = value
            elif key == "general.alignment":
                raise GGUFFormatError(f"general.alignment at byte {at} is not a number")
        entries = [self._tensor_entry() for _ in range(tensor_count)]
        names = [entry[0] for entry in entries]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise GGUFFormatError(f"tensor {twice!r} appears twice")
        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self._pos // alignment) * alignment
        self.tensors = [self._tensor(start, *entry) for entry in entries]

    # -- reading, bounded by what remains ---------------------------------------------------

    def _take(self, n: int) -> bytes:
        if n > len(self._map) - self._pos:
            raise GGUFFormatError(f"it ends at byte {len(self._map)}, inside the header "
                                  "(a truncated file?)")
        data = self._map[self._pos:self._pos + n]
        self._pos += n
        return data

    def _scalar(self, fmt: str):
        return struct.unpack("<" + fmt, self._take(struct.calcsize(fmt)))[0]

    def _check_count(self, count: int, min_size: int, what: str):
        if count * min_size > len(self._map) - self._pos:
            raise GGUFFormatError(f"its header lists {count:,} {what}, more than the "
                                  f"{len(self._map):,}-byte file can hold")

    def _string(self, what: str) -> str:
        raw = self._take(self._length(what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"{what} ending at byte {self._pos} is not UTF-8") from None

    def _length(self, what: str) -> int:
        n = self._scalar("Q")
        if n > len(self._map) - self._pos:
            raise GGUFFormatError(f"{what} at byte {self._pos - 8} is {n:,} bytes long, past "
                                  "the end of the file")
        return n

    def _value(self, kind: int, key: str, depth: int):
        if kind in _SCALARS:
            return self._scalar(_SCALARS[kind])
        if kind == _STRING:
            raw = self._take(self._length(f"the value of {key!r}"))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return _UNDECODABLE
        if kind == _ARRAY and depth < _MAX_NESTING:
            item, count = self._scalar("I"), self._scalar("Q")
            if item in _SCALARS:
                fmt = _SCALARS[item]
                size = struct.calcsize(fmt)
                self._check_count(count, size, f"values in {key!r}")
                values = np.frombuffer(self._map, np.dtype("<" + fmt), count, self._pos)
                self._pos += count * size
                return values.astype(bool).tolist() if fmt == "?" else values.tolist()
            self._check_count(count, 8 if item == _STRING else 12, f"values in {key!r}")
            if item == _STRING:
                return self._strings(count, key)
            values = [self._value(item, key, depth + 1) for _ in range(count)]
            return _UNDECODABLE if _UNDECODABLE in values else values
        raise GGUFFormatError(f"metadata key {key!r} has the value type {kind}, which GGUF "
                              "does not define")

    def _strings(self, count: int, key: str):
        """`count` strings from the current position: the vocabulary lists' fast path."""
        data, pos, end = self._map, self._pos, len(self._map)
        unpack = struct.Struct("<Q").unpack_from
        out = []
        undecodable = False
        for _ in range(count):
            if end - pos < 8:
                self._pos = pos
                self._take(8)  # raises, naming the end
            (n,) = unpack(data, pos)
            pos += 8
            if n > end - pos:
                raise GGUFFormatError(f"a string of {key!r} at byte {pos - 8} is {n:,} bytes "
                                      "long, past the end of the file")
            try:
                out.append(data[pos:pos + n].decode("utf-8"))
            except UnicodeDecodeError:
                undecodable = True
            pos += n
        self._pos = pos
        return _UNDECODABLE if undecodable else out

    def _tensor_entry(self):
        name = self._string("a tensor name")
        dims = self._scalar("I")
        if not 1 <= dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {name!r} has {dims} dimensions (1 to {MAX_DIMS})")
        shape = tuple(self._scalar("Q") for _ in range(dims))
        return name, shape, self._scalar("I"), self._scalar("Q")

    def _tensor(self, start: int, name: str, shape: tuple, kind: int, offset: int) -> Tensor:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        try:
            qtype = GGMLQuantizationType(kind)
            block, block_bytes = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise GGUFFormatError(f"tensor {name!r} has the type {kind}, which the gguf "
                                  "package does not know") from None
        if shape[0] % block:
            raise GGUFFormatError(f"tensor {name!r} has rows of {shape[0]} values, not a "
                                  f"multiple of {qtype.name}'s blocks of {block}")
        count = int(np.prod(shape, dtype=object))
        size = count // block * block_bytes
        begin = start + offset
        if begin + size > len(self._map):
            raise GGUFFormatError(f"tensor {name!r} ({size:,} bytes at byte {begin:,}) runs "
                                  f"past the end of the {len(self._map):,}-byte file (a "
                                  "truncated file?)")
        numpy_shape = tuple(reversed(shape))
        typed = _TYPED.get(qtype.name)
        if typed:
            data = np.frombuffer(self._map, typed, count, begin).reshape(numpy_shape)
        else:
            data = np.frombuffer(self._map, np.uint8, size, begin).reshape(
                quant_shape_to_byte_shape(numpy_shape, qtype))
        return Tensor(name, qtype, shape, data)

