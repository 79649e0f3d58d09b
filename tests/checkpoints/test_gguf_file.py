"""tfllm's GGUF header reader (tfllm/checkpoints/gguf_file.py) reads what `gguf.GGUFReader`
reads (every metadata value, every tensor's name, type, shape and bytes) from files
written by the `gguf` package, and a damaged or hostile header is a GGUFFormatError naming
the place, quickly, never another exception or an allocation the header asks for."""

import re
import struct
import time

import numpy as np
import pytest

from tests.checkpoints.test_gguf_gemma import write_gemma3_gguf
from tests.checkpoints.test_gguf import write_gguf
from tests.tokenizers.hf_fixtures import make_tokenizer_json
from tfllm.checkpoints.gguf_file import GGUFFile, GGUFFormatError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf-files")
    llama = str(d / "llama.gguf")
    write_gguf(llama, make_tokenizer_json(str(d / "tok.json"), "smollm2"), "qwen2", tied=True)
    gemma = str(d / "gemma3.gguf")
    write_gemma3_gguf(gemma)
    return [llama, gemma]


def _reference(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()
              if not name.startswith("GGUF.")}
    return fields, reader.tensors


def test_reads_what_the_gguf_package_reads(files):
    for path in files:
        fields, tensors = _reference(path)
        got = GGUFFile(path)
        assert got.fields == fields
        for name, value in fields.items():  # same Python types, not only equal values
            assert type(got.fields[name]) is type(value), name
        assert [t.name for t in got.tensors] == [t.name for t in tensors]
        for mine, ref in zip(got.tensors, tensors):
            assert mine.tensor_type == ref.tensor_type and mine.shape == tuple(ref.shape)
            assert mine.data.dtype == ref.data.dtype and mine.data.shape == ref.data.shape
            np.testing.assert_array_equal(mine.data, ref.data, err_msg=mine.name)
    # Booleans stay booleans (not 0/1).
    assert isinstance(GGUFFile(files[1]).fields["tokenizer.ggml.add_bos_token"], bool)


def test_damaged_headers_are_format_errors(files, tmp_path):
    path = files[0]
    data = open(path, "rb").read()
    import gguf

    end = gguf.GGUFReader(path).data_offset  # where the tensor data starts
    rng = np.random.default_rng(0)
    spoiled = tmp_path / "spoiled.gguf"
    cases = [data[:n] for n in range(0, end + 64, max(1, end // 150))]
    for _ in range(150):  # random bytes of the header changed
        b = bytearray(data)
        for at in rng.integers(0, end, 4):
            b[at] = rng.integers(0, 256)
        cases.append(bytes(b))
    started = time.time()
    errors = 0
    for case in cases:
        spoiled.write_bytes(case)
        try:
            GGUFFile(str(spoiled))
        except GGUFFormatError:
            errors += 1
    assert errors >= len(cases) // 2
    assert time.time() - started < 60


def _gguf_bytes(fields=(), tensors=(), version=3):
    """A GGUF header by hand: fields as (key, type, payload bytes)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(fields))
    for key, kind, payload in fields:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + payload
    for name, dims, kind, offset in tensors:
        out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}QIQ", *dims, kind, offset)
    return out


def _string(text):
    return struct.pack("<Q", len(text)) + text.encode()


@pytest.mark.parametrize("header, message", [
    (b"", "the file is empty"),
    (b"GGML" + bytes(20), "does not start with the GGUF magic"),
    (_gguf_bytes(version=1), "GGUF version 1 is not supported"),
    (_gguf_bytes(version=3 << 24), "(a big-endian file?)"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60), "lists 1,152,921,504,606,846,976 metadata"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0), "1,099,511,627,776 tensors"),
    (_gguf_bytes([("k", 8, struct.pack("<Q", 1 << 62))]), "past the end of the file"),
    (_gguf_bytes([("k", 9, struct.pack("<IQ", 4, 1 << 61))]), "values in 'k'"),
    (_gguf_bytes([("k", 9, struct.pack("<IQ", 8, 1 << 61))]), "values in 'k'"),
    (_gguf_bytes([("k", 9, struct.pack("<IQ", 8, 2) + _string("a")
                   + struct.pack("<Q", 1 << 40))]), "a string of 'k' at byte"),
    (_gguf_bytes([("k", 13, b"")]), "the value type 13, which GGUF does not define"),
    (_gguf_bytes([("k", 4, b"\0" * 4), ("k", 4, b"\0" * 4)]), "'k' appears twice"),
    (_gguf_bytes([("general.alignment", 4, struct.pack("<I", 24))]), "not a power of two"),
    (_gguf_bytes([("general.alignment", 8, _string("32"))]), "not a power of two"),
    (_gguf_bytes([("general.alignment", 8, struct.pack("<Q", 1) + b"\xff")]),
     "general.alignment at byte 24 is not a number"),
    (_gguf_bytes(tensors=[("w", (4, 4, 4, 4, 4), 0, 0)]), "5 dimensions"),
    (_gguf_bytes(tensors=[("w", (4, 4), 99, 0)]), "the type 99"),
    (_gguf_bytes(tensors=[("w", (31, 2), 8, 0)]), "not a multiple of Q8_0's blocks of 32"),
    (_gguf_bytes(tensors=[("w", (1 << 40, 1 << 20), 0, 0)]), "runs past the end"),
    (_gguf_bytes(tensors=[("w", (4,), 0, 0), ("w", (4,), 0, 0)]), "'w' appears twice"),
], ids=lambda case: case if isinstance(case, str) else None)
def test_each_bad_header_names_its_fault(tmp_path, header, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(header)
    with pytest.raises(GGUFFormatError, match=re.escape(message)):
        GGUFFile(str(path))


def test_text_that_is_not_utf8_leaves_its_field_out(tmp_path):
    path = tmp_path / "latin1.gguf"
    path.write_bytes(_gguf_bytes([("general.name", 8, _string("x") + b""),
                                  ("general.description", 8, struct.pack("<Q", 1) + b"\xe9"),
                                  ("general.tags", 9, struct.pack("<IQ", 8, 1)
                                   + struct.pack("<Q", 1) + b"\xff")]))
    assert GGUFFile(str(path)).fields == {"general.name": "x"}
