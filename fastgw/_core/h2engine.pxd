# Declarations of the downstream HTTP/2 engine (see h2engine.pyx; included by worker.pxd; its streams:
# h2stream.pxd).

from fastgw._core.h2clock cimport HeaderClock
from fastgw._core.h2frames cimport H2Event, H2Wire
from fastgw._core.runtime cimport H2Limits

cdef enum:
    RESET_MIN = 500               # Rapid Reset: streams opened in the window before the ratio counts
    FLOOD_WINDOW = 10             # seconds over which reset and control-frame budgets are counted
    MAX_CONTROL = 1000            # control frames per window
    MAX_EMPTY_RUN = 10            # consecutive empty DATA frames without END_STREAM
    MAX_OUTQ = 1048576            # bytes written while the transport is paused (the client does not read)
    STREAM_OUTQ = 65536           # response bytes buffered per stream before its upstream is paused
    GOAWAY_ACK_WAIT = 2           # drain: seconds the first GOAWAY's PING may go unanswered
    LAST_STREAM_ID = 2147483647   # 2^31-1: the first GOAWAY of a drain names every stream

# HTTP/2 error codes (RFC 9113 7).
cdef enum:
    E_NO_ERROR = 0
    E_PROTOCOL = 1
    E_INTERNAL = 2
    E_REFUSED = 7
    E_CANCEL = 8
    E_COMPRESSION = 9
    E_CALM = 11


@cython.final
cdef class H2Conn:
    cdef ClientConn cl
    cdef public H2Wire h2
    cdef object transport
    cdef Worker w
    cdef H2Limits lim
    cdef dict streams
    cdef list dirty
    cdef list after_end           # streams to reset (NO_ERROR) once their END_STREAM is out
    cdef public bint batching
    cdef public bint closed
    cdef bint wpaused
    cdef bint draining
    cdef int goaway_stage         # 0; 1: drain's GOAWAY(2^31-1) + PING out; 2: GOAWAY(last_sid) out
    cdef double goaway_at         # when stage 1 began
    cdef bint peer_goaway         # the client sent GOAWAY
    cdef int last_sid
    cdef int nreq
    cdef double last_active
    cdef double win_start
    cdef int win_opened
    cdef int win_reset
    cdef int win_ctrl
    cdef int empty_run
    cdef Py_ssize_t paused_out    # bytes written since the transport paused (DATA is not sent then)
    cdef bint flush_soon          # a flush is scheduled for the end of this loop iteration
    cdef HeaderClock hclock       # times header blocks (server.limits.header_timeout)
    cdef void feed(self, bytes data)
    cdef void on_request(self, H2Event ev)
    cdef int build_head(self, RequestHead h, list headers, bint ended)
    cdef void on_data(self, H2Event ev)
    cdef void ack(self, H2Stream st)
    cdef void on_end(self, int sid)
    cdef void on_reset(self, int sid)
    cdef void push(self, H2Stream st)
    cdef void push_blocked(self)
    cdef void flush(self)
    cdef void schedule(self)
    cdef void stream_ended(self, H2Stream st)
    cdef void calm(self)
    cdef void fatal(self)
    cdef void final_goaway(self)
    cdef void close_if_done(self)
    cdef void close(self)
    cdef void abort(self)
    cdef void lost(self)
    cdef void check(self, double now)
