# The downstream asyncio shell's pieces shared by both engines (included by worker.pyx): write batching
# (write_parts, concat: what one read produced is written once) and the TLS handshake protocol. The
# connection protocol itself is h1engine.pyx's ClientConn, which hands an HTTP/2 connection to
# h2engine.pyx's H2Conn (h2c preface or ALPN).


# The write method of the last transport type written to (uvloop's TCPTransport on the data path), taken
# from the type once: transport.write(data) looks the name up on every call (~120 instructions).
cdef object _write_type = None
cdef object _write_fn = None


cdef inline void twrite(object transport, bytes data):
    """transport.write(data), the method found through a one-entry cache of its type."""
    global _write_type, _write_fn
    cdef object tp = type(transport)
    if tp is not _write_type:
        _write_fn = tp.write
        _write_type = tp
    _write_fn(transport, data)


cdef void write_parts(object transport, list parts, Py_ssize_t n=-1):
    """One write of parts[:n] (n < 0: all): small ones are copied together (one buffer, one syscall),
    large ones go to writelines, which uvloop hands to writev without copying (a 64 KiB body is not
    copied twice)."""
    cdef Py_ssize_t total, k
    cdef bytes out
    if n < 0:
        n = PyList_GET_SIZE(parts)
    if n == 1:
        part = parts[0]
        if type(part) is bytes:
            twrite(transport, part)
        else:
            transport.write(part)
        return
    total = parts_size(parts, n)
    if total < 0:                               # (not all bytes: measured through the buffer protocol)
        total = 0
        for k in range(n):
            total += len(parts[k])
        if total < GATHER_MIN:
            transport.write(b"".join(parts[:n]))
            return
    if total >= GATHER_MIN:
        transport.writelines(parts if n == PyList_GET_SIZE(parts) else parts[:n])
    else:
        out = PyBytes_FromStringAndSize(NULL, total)
        put_parts(PyBytes_AS_STRING(out), parts, n)
        twrite(transport, out)


cdef bytes concat(list parts):
    """b"".join(parts) for a list of bytes, in C: one size pass, one allocation, one memcpy per part
    (bytes.join costs ~150 instructions per part through the sequence and buffer protocols)."""
    cdef Py_ssize_t total = parts_size(parts)
    cdef bytes out
    if total < 0:
        return b"".join(parts)              # bytearray/memoryview parts: the general path
    out = PyBytes_FromStringAndSize(NULL, total)
    put_parts(PyBytes_AS_STRING(out), parts)
    return out


cdef Py_ssize_t parts_size(list parts, Py_ssize_t n=-1) noexcept:
    """The bytes in parts[:n] (n < 0: all), bytes objects, or -1 when a part is something else. The parts
    are read as borrowed pointers: no reference counting and no index check per part."""
    cdef Py_ssize_t total = 0, k
    cdef PyObject* part
    if n < 0:
        n = PyList_GET_SIZE(parts)
    for k in range(n):
        part = PyList_GET_ITEM(parts, k)
        if part.ob_type is not &PyBytes_Type:
            return -1
        total += PTR_BYTES_SIZE(part)
    return total


cdef char* put_parts(char* dst, list parts, Py_ssize_t n=-1) noexcept:
    """Copy parts[:n] (n < 0: all), bytes objects (parts_size >= 0), to dst; returns the end."""
    cdef Py_ssize_t k, size
    cdef PyObject* part
    if n < 0:
        n = PyList_GET_SIZE(parts)
    for k in range(n):
        part = PyList_GET_ITEM(parts, k)
        size = PTR_BYTES_SIZE(part)
        memcpy(dst, PTR_BYTES_DATA(part), size)
        dst += size
    return dst


cdef inline int slot_put(list slots, Py_ssize_t i, object value) except -1:
    """slots[i] = value for 0 <= i <= len (i == len: appended), without the generic item assignment
    (~25 instructions instead of ~70): the send batch and the idle pool are stacks whose list keeps its
    slots (a list emptied and refilled frees and reallocates its item array)."""
    cdef PyObject* old
    if i == PyList_GET_SIZE(slots):
        slots.append(value)
        return 0
    old = PyList_GET_ITEM(slots, i)
    Py_INCREF(value)
    PyList_SET_ITEM(slots, i, value)
    Py_DECREF(<object>old)
    return 0


cdef inline char* put_bytes(char* d, bytes b) noexcept:
    cdef Py_ssize_t k = PyBytes_GET_SIZE(b)
    memcpy(d, PyBytes_AS_STRING(b), k)
    return d + k


cdef inline void filled(const char* d, bytes out) noexcept:
    """A head written with put_bytes/put_parts into a bytes object sized first must end exactly at its
    end. A miscount (a line added to the copy but not to the size sum) writes past the buffer: the heap
    is no longer trustworthy, so the worker stops at once (the supervisor starts another) rather than run
    on with it. One comparison per head; the proxy suites run every branch of both writers."""
    if d != PyBytes_AS_STRING(out) + PyBytes_GET_SIZE(out):
        abort()


cdef class Handshake:
    """The protocol of an admitted TLS connection until its handshake completes. A failed handshake never
    reaches the protocol (no connection_made, no connection_lost), and a ClientConn is only freed by the
    cycle collector (its parser refers back to it): this small object, freed as soon as uvloop drops it,
    gives the connection's place back then. On success it hands the transport to a ClientConn
    (transport.set_protocol), so requests never pass through it."""

    def connection_made(self, transport):
        cdef ClientConn c = ClientConn(self.w)
        self.started = True
        c.admitted = True
        c.parked = self.parked
        c.proxied_peer = self.proxied_peer
        transport.set_protocol(c)
        c.connection_made(transport)

    def connection_lost(self, exc):
        pass                                  # (never before connection_made, which hands over)

    def __dealloc__(self):
        if not self.started and self.w is not None:
            self.w.nconns -= 1                # Worker.sweep resumes accepting if this made room
