"""fastgw's HPACK decoder (fastgw/_core/hpack.pyx, H2Decoder) against the reference, hpack.Decoder: blocks
made by hpack's own encoder (dynamic table insertions, evictions, Huffman or not, never-indexed fields,
table size updates) decode to the same fields, block after block on one connection's state; and broken
blocks raise the same exception classes, which end the connection with the same GOAWAY (COMPRESSION_ERROR;
ENHANCE_YOUR_CALM for an oversized list: tests/test_h2_lifecycle.py, tests/test_h2.py)."""
from __future__ import annotations

import hpack
import pytest
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.hpack import H2Decoder

NAMES = [b":method", b":path", b":authority", b":scheme", b"accept", b"user-agent", b"cookie", b"x-a",
         b"x-long-name-" + b"n" * 40, b"content-type", b"authorization"]
field = st.tuples(st.sampled_from(NAMES), st.binary(min_size=0, max_size=80).map(lambda b: b.replace(b"\r", b"")))
block = st.tuples(st.lists(field, min_size=0, max_size=12), st.booleans(), st.sampled_from([None, 0, 64, 256, 4096]),
                  st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(block, min_size=1, max_size=8))
def test_same_fields_as_hpack_block_after_block(blocks):
    enc = hpack.Encoder()
    ref, ours = hpack.Decoder(), H2Decoder()
    for fields, huffman, resize, sensitive in blocks:
        if resize is not None:
            enc.header_table_size = resize           # the next block starts with a size update
        if sensitive:
            fields = [hpack.NeverIndexedHeaderTuple(n, v) if n == b"authorization" else (n, v) for n, v in fields]
        data = enc.encode(fields, huffman=huffman)
        want = [(bytes(n), bytes(v)) for n, v in ref.decode(data, raw=True)]
        assert ours.decode(data, raw=True) == want
        assert ours.header_table_size == ref.header_table_size


def test_indexed_fields_come_from_the_dynamic_table():
    enc = hpack.Encoder()
    dec = H2Decoder()
    fields = [(b":method", b"GET"), (b":path", b"/3b"), (b":authority", b"127.0.0.1:8080"), (b"user-agent", b"h2load")]
    first = enc.encode(fields)
    again = enc.encode(fields)
    assert len(again) < len(first) and len(again) == 4           # one byte per field the second time
    assert dec.decode(first) == fields and dec.decode(again) == fields


@pytest.mark.parametrize("data, exc", [
    (b"\x80", HPACKDecodingError),                   # index 0
    (b"\xbe", HPACKDecodingError),                   # index 62 with an empty dynamic table
    (b"\xff", HPACKDecodingError),                   # integer continuation missing
    (b"\xff\xff\xff\xff\xff\xff\x01", HPACKDecodingError),   # integer too large
    (b"\x40\x05ab", HPACKDecodingError),             # name literal shorter than its length
    (b"\x44\x8f\xff", HPACKDecodingError),           # Huffman string with invalid padding / EOS
    (b"\x82\x20", HPACKDecodingError),               # size update after a field
    (b"\x3f\xe2\x1f", InvalidTableSizeError),        # size update to 4096 + 1 > the allowed 4096
])
def test_broken_blocks_raise_what_hpack_raises(data, exc):
    with pytest.raises(exc):
        hpack.Decoder().decode(data, raw=True)
    with pytest.raises(exc):
        H2Decoder().decode(data, raw=True)


def test_oversized_header_list():
    enc = hpack.Encoder()
    data = enc.encode([(b"x-a", b"v" * 1000), (b"x-b", b"v" * 1000)])
    dec = H2Decoder(1500)
    with pytest.raises(OversizedHeaderListError):
        dec.decode(data)
    assert H2Decoder(4096).decode(data) == [(b"x-a", b"v" * 1000), (b"x-b", b"v" * 1000)]
