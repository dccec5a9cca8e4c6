# Declarations of the W3C Trace Context of a request (see tracecontext.pyx).

from libc.stdint cimport uint64_t

cdef enum:
    TP_LEN = 55              # a version-00 traceparent: 2 + 1 + 32 + 1 + 16 + 1 + 2
    TP_LINE = 15             # len(b"\r\ntraceparent: "), before it in an HTTP/1.1 head
    TS_MAX_MEMBERS = 32      # tracestate list members forwarded at most (W3C Trace Context 3.3.1.1)
    TS_MAX_BYTES = 512       # tracestate bytes forwarded at most (the combined field)
    FLAG_SAMPLED = 1

cdef struct TraceCtx:
    uint64_t hi              # trace id, high and low 64 bits (never both 0)
    uint64_t lo
    uint64_t span            # the gateway's span id: the parent id it forwards upstream
    uint64_t parent          # the caller's span id (the inbound parent id), 0 when the trace started here
    unsigned char flags      # the trace flags forwarded (only the sampled bit)

cdef bint parse_traceparent(const unsigned char* p, Py_ssize_t n, TraceCtx* t) noexcept
cdef bint tracestate_ok(bytes value) noexcept
cdef bint trace_start(TraceCtx* t, bytes traceparent, bint trust, uint64_t threshold) noexcept
cdef uint64_t rand64() noexcept
cdef bytes traceparent_bytes(TraceCtx* t, bint line)
cdef void put_hex(char* o, uint64_t v, int digits) noexcept
