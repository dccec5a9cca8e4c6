# Declarations of the multiplexed HTTP/2 upstream (see upstream_h2.pyx).

from fastgw._core.balancer cimport Target

cdef enum:
    MAX_CONNS = 4               # connections per target
    MAX_STREAMS = 1000          # streams per connection, whatever the server allows
    FIRST_STREAMS = 100         # streams per connection before the server's SETTINGS arrive
    STREAM_WINDOW = 262144      # our receive window per stream (response DATA in flight)
    CONN_WINDOW = 4194304       # and per connection
    REPLAY_MAX = 65536          # request bytes kept for a replay of an unprocessed stream
    MAX_RETRIES = 3             # replays of one unprocessed stream
    MAX_RESP_FIELDS = 65536     # bytes of one response header list (as an HTTP/1.1 upstream's head)

# HTTP/2 error codes (RFC 9113 7) the upstream side sends or reads.
cdef enum:
    H2_REFUSED_STREAM = 7
    H2_CANCEL = 8


cdef class H2Sink:
    """What an upstream stream reports to: the call that joined it to a client request. Every method is
    called at most until the stream is done (on_end, on_trailers, on_reset, on_error)."""
    cdef void ack_request(self, long long n)
    cdef void on_headers(self, list headers, bint end)
    cdef void on_data(self, bytes data, long long n)
    cdef void on_trailers(self, list headers)
    cdef void on_end(self)
    cdef void on_reset(self, int code)
    cdef void on_error(self, int status, str slug, bytes detail, str kind)
    cdef void on_replay(self, str kind)


cdef class H2UpStream:
    cdef H2Pool pool
    cdef H2UpConn conn
    cdef H2Sink sink
    cdef int sid
    cdef list headers
    cdef list outq                 # [bytes, downstream bytes to acknowledge once sent]
    cdef bint req_end              # the client ended its request
    cdef bint end_sent
    cdef bint done                 # reset, failed or finished: nothing more goes either way
    cdef bint resp_done            # the response ended (trailers or END_STREAM)
    cdef long long held            # downstream acknowledgements held while the transport is paused
    cdef list replay               # request DATA sent, kept until the response starts (None: too much)
    cdef Py_ssize_t replay_bytes
    cdef int retries
    cdef bint can_replay(self)
    cdef void replay_later(self, double delay, str kind)
    cdef void settle(self)
    cdef void keep(self, bytes data)
    cpdef send(self, bytes data, long long owed)
    cpdef end(self)
    cpdef cancel(self)
    cpdef ack(self, long long n)


cdef class H2UpConn:
    cdef H2Pool pool
    cdef object h2
    cdef object transport
    cdef dict streams              # stream id -> H2UpStream
    cdef list queued               # taken before the server's SETTINGS arrived
    cdef set blocked               # streams with request DATA waiting for window
    cdef public bint closed
    cdef bint ready
    cdef bint goaway
    cdef bint paused
    cdef bint flush_soon
    cdef object idle_timer
    cdef object task
    cdef double full_until
    cdef bint room(self)
    cdef void take(self, H2UpStream s)
    cdef void open(self, H2UpStream s)
    cdef void failed(self, int status, str slug, bytes detail, str kind)
    cdef void settings_arrived(self)
    cdef void pump(self, H2UpStream s)
    cdef void reset(self, H2UpStream s, int code)
    cdef void forget(self, H2UpStream s)
    cdef void finished(self, H2UpStream s)
    cdef void released(self)
    cdef void on_goaway(self, int last_sid)
    cdef void lost_all(self, str kind)
    cpdef close(self)
    cdef void schedule(self)
    cdef void flush(self)


cdef class H2Pool:
    cdef public Target target
    cdef public object ssl
    cdef public list conns
    cdef object waiting            # collections.deque of H2UpStream
    cpdef H2UpStream open(self, H2Sink sink, list headers)
    cdef void place(self, H2UpStream s)
    cdef void drop(self, H2UpConn c)
    cdef void forget(self, H2UpStream s)
