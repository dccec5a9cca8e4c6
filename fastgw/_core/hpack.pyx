# cython: language_level=3
"""The HPACK header block codec of the downstream HTTP/2 engine (h2engine.pyx hands both to h2).

  H2Decoder  request header blocks (RFC 7541), in place of hpack.Decoder
  H2Encoder  response header blocks, literal without indexing, in place of hpack.Encoder
"""


# ---------------------------------------------------------------------------------------------------
# Response header encoding. h2's HPACK encoder (pure Python, with the dynamic table and Huffman) was the
# largest single cost of an HTTP/2 response in the profile (~20% of the worker's CPU). fastgw encodes
# response fields itself, never inserting into the dynamic table (RFC 7541 6.2.2, literal without
# indexing; static-table names and full matches are still indexed), so the peer's table stays empty and
# no encoder state must be kept in step with h2's. The encoded form of repeated fields is cached.

from hpack.table import HeaderTable as _HpTable

cdef dict HP_FULL = {}       # (name, value) -> static index
cdef dict HP_NAME = {}       # name -> first static index
for _i, (_n, _v) in enumerate(_HpTable.STATIC_TABLE, 1):
    HP_FULL.setdefault((_n, _v), _i)
    HP_NAME.setdefault(_n, _i)


# ---------------------------------------------------------------------------------------------------
# Request header decoding (RFC 7541). Stands in for h2's hpack.Decoder, which was 17% of the worker's CPU
# under h2load (a Python loop with a memoryview slice, and a bytes copy of the rest of the block for every
# literal, per field). Same interface for h2: decode(data, raw=True), max_header_list_size,
# max_allowed_table_size, and the same exceptions (hpack.exceptions): h2 turns an oversized list into
# GOAWAY ENHANCE_YOUR_CALM and the others into a GOAWAY whose code H2Conn.feed makes COMPRESSION_ERROR
# (RFC 9113 4.3). Fields come back as plain (name, value) tuples of bytes. Huffman
# strings (first requests on a connection; later ones hit the dynamic table) use hpack's decoder.

from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman_table import decode_huffman as _decode_huffman

cdef tuple HP_STATIC_T = tuple((<tuple>_e)[:2] for _e in _HpTable.STATIC_TABLE)


cdef class H2Decoder:
    """HPACK decoder for request header blocks (see above)."""

    def __init__(self, Py_ssize_t max_header_list_size=65536):
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = 4096
        self.maxsize = 4096
        self.dyn = []

    @property
    def header_table_size(self):
        return self.maxsize

    @header_table_size.setter
    def header_table_size(self, Py_ssize_t value):
        self.maxsize = value
        self.evict(0)

    cdef void evict(self, Py_ssize_t room):
        """Drop the oldest entries until `room` more bytes fit under the size limit."""
        cdef tuple e
        cdef Py_ssize_t n = 0
        while n < len(self.dyn) and self.size + room > self.maxsize:
            e = <tuple>self.dyn[n]
            self.size -= len(<bytes>e[0]) + len(<bytes>e[1]) + 32
            n += 1
        if n:
            del self.dyn[:n]

    cdef tuple entry(self, Py_ssize_t idx):
        """Field `idx` of the static table (1..61), then of the dynamic table (62: the newest)."""
        cdef Py_ssize_t k
        if 1 <= idx <= 61:
            return <tuple>HP_STATIC_T[idx - 1]
        k = idx - 62
        if idx <= 0 or k >= len(self.dyn):
            raise HPACKDecodingError(f"invalid table index {idx}")
        return <tuple>self.dyn[len(self.dyn) - 1 - k]

    def decode(self, data, raw=True):
        cdef bytes buf = bytes(data)
        cdef const unsigned char* p = buf
        cdef Py_ssize_t n = len(buf), i = 0, idx, inflated = 0, esize
        cdef unsigned char b
        cdef list out = []
        cdef tuple field
        cdef bytes name, value
        cdef int kind                      # 0 indexed, 1 literal with indexing, 2 size update, 3 literal
        while i < n:
            b = p[i]
            if b & 0x80:
                i = _hp_read_int(p, n, i, 7, &idx)
                field = self.entry(idx)
            elif b & 0x20 and not (b & 0x40):
                if out:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                i = _hp_read_int(p, n, i, 5, &idx)
                if idx > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.maxsize = idx
                self.evict(0)
                continue
            else:
                kind = 1 if b & 0x40 else 3
                i = _hp_read_int(p, n, i, 6 if kind == 1 else 4, &idx)
                if idx:
                    name = <bytes>self.entry(idx)[0]
                else:
                    name = _hp_read_str(buf, p, n, &i)
                value = _hp_read_str(buf, p, n, &i)
                field = (name, value)
                if kind == 1:
                    esize = len(name) + len(value) + 32
                    if esize > self.maxsize:
                        self.dyn.clear()
                        self.size = 0
                    else:
                        self.evict(esize)
                        self.dyn.append(field)
                        self.size += esize
            out.append(field)
            inflated += len(<bytes>field[0]) + len(<bytes>field[1]) + 32
            if inflated > self.max_header_list_size:
                raise OversizedHeaderListError(f"A header list larger than {self.max_header_list_size} has been received")
        if self.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return out


cdef Py_ssize_t _hp_read_int(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int bits,
                             Py_ssize_t* out) except -1:
    """An HPACK integer with an N-bit prefix at p[i] (RFC 7541 5.1); returns the index after it."""
    cdef Py_ssize_t mask = (1 << bits) - 1
    cdef Py_ssize_t v = p[i] & mask
    cdef int shift = 0
    cdef unsigned char b
    i += 1
    if v == mask:
        while True:
            if i >= n:
                raise HPACKDecodingError("Unable to decode HPACK integer representation")
            if shift > 28:
                raise HPACKDecodingError("HPACK integer too large")
            b = p[i]
            i += 1
            v += <Py_ssize_t>(b & 127) << shift
            shift += 7
            if not (b & 128):
                break
    out[0] = v
    return i


cdef bytes _hp_read_str(bytes buf, const unsigned char* p, Py_ssize_t n, Py_ssize_t* at):
    """The HPACK string literal at p[at[0]] (RFC 7541 5.2); at[0] moves past it."""
    cdef Py_ssize_t length, i = at[0]
    cdef bint huff
    if i >= n:
        raise HPACKDecodingError("Truncated header block")
    huff = p[i] & 0x80
    i = _hp_read_int(p, n, i, 7, &length)
    if length > n - i:
        raise HPACKDecodingError("Truncated header block")
    s = buf[i:i + length]
    at[0] = i + length
    return _decode_huffman(s) if huff else s        # raises HPACKDecodingError on a bad string


cdef bytes _hp_int(Py_ssize_t value, int prefix_bits, int first):
    """An HPACK integer (RFC 7541 5.1) whose first byte carries the flag bits `first`."""
    cdef Py_ssize_t limit = (1 << prefix_bits) - 1
    cdef bytearray out
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


cdef bytes HP_XRID = b"\x00\x0cx-request-id"   # a literal without indexing, new name: x-request-id


cdef class H2Encoder:
    """Stands in for h2's hpack.Encoder (h2 calls encode(headers) and sets header_table_size)."""

    def __init__(self):
        self.cache = {}

    @property
    def header_table_size(self):
        return 0

    @header_table_size.setter
    def header_table_size(self, value):
        # The peer changed SETTINGS_HEADER_TABLE_SIZE: acknowledge it with a size update (RFC 7541 4.2);
        # fastgw's own use of the table stays zero whatever the size.
        self.pending = _hp_int(min(int(value), 4096), 5, 0x20)

    cpdef bytes encode(self, object headers, bint huffman=True):
        cdef list out = []
        cdef dict byname
        cdef bytes name, value, enc
        if self.pending is not None:
            out.append(self.pending)
            self.pending = None
        for name, value in headers:
            byname = self.cache.get(name)
            if byname is not None:
                enc = byname.get(value)
                if enc is not None:
                    out.append(enc)
                    continue
            if name == b"x-request-id":           # unique per response: not worth a cache slot
                out.append(HP_XRID)
                out.append(_hp_int(len(value), 7, 0))
                out.append(value)
                continue
            enc = self.encode1(name, value)
            out.append(enc)
            if name == b"date":
                continue                          # (the same, once a second)
            if self.ncache >= HP_CACHE_MAX:
                self.cache = {}
                self.ncache = 0
            if byname is None:
                byname = self.cache[name] = {}
            byname[value] = enc
            self.ncache += 1
        return b"".join(out)

    cdef bytes encode1(self, bytes name, bytes value):
        idx = HP_FULL.get((name, value))
        if idx is not None:
            return _hp_int(<Py_ssize_t>idx, 7, 0x80)
        idx = HP_NAME.get(name)
        if idx is not None:
            return _hp_int(<Py_ssize_t>idx, 4, 0) + _hp_int(len(value), 7, 0) + value
        return b"\x00" + _hp_int(len(name), 7, 0) + name + _hp_int(len(value), 7, 0) + value
