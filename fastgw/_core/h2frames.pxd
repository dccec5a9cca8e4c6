# Declarations of the server side of an HTTP/2 connection's frames and stream states (see h2frames.pyx).

from fastgw._core.hpack cimport H2Decoder, H2Encoder

# Event kinds (H2Event.kind), in the order h2's events of the same meaning are produced.
cdef enum:
    EV_REQUEST = 1        # a new stream's request head (headers; stream_ended)
    EV_DATA = 2           # request DATA (data, flow_controlled_length, stream_ended)
    EV_END = 3            # the client's END_STREAM (after EV_REQUEST, EV_DATA or EV_TRAILERS)
    EV_RESET = 4          # the stream ended by RST_STREAM: the client's (error_code) or a stream error's
    EV_WINDOW = 5         # WINDOW_UPDATE (stream_id 0: the connection)
    EV_PING = 6           # PING (answered already)
    EV_PING_ACK = 7       # the answer to one of ours (ping_data)
    EV_PRIORITY = 8       # PRIORITY (no effect: RFC 9113 deprecates the tree)
    EV_SETTINGS = 9       # the client's SETTINGS (applied and acknowledged already)
    EV_TRAILERS = 10      # a request's trailers (headers)
    EV_GOAWAY = 11        # the client's GOAWAY (error_code, last_stream_id)
    EV_SETTINGS_ACK = 12  # the client acknowledged our SETTINGS
    EV_IGNORED = 13       # a frame on a closed stream or of an unknown type: answered or dropped here

cdef enum:
    F_DATA = 0
    F_HEADERS = 1
    F_PRIORITY = 2
    F_RST_STREAM = 3
    F_SETTINGS = 4
    F_PUSH_PROMISE = 5
    F_PING = 6
    F_GOAWAY = 7
    F_WINDOW_UPDATE = 8
    F_CONTINUATION = 9

cdef enum:
    FL_END_STREAM = 0x1
    FL_ACK = 0x1
    FL_END_HEADERS = 0x4
    FL_PADDED = 0x8
    FL_PRIORITY = 0x20

# Error codes (RFC 9113 7).
cdef enum:
    H2E_NO_ERROR = 0
    H2E_PROTOCOL = 1
    H2E_INTERNAL = 2
    H2E_FLOW_CONTROL = 3
    H2E_STREAM_CLOSED = 5
    H2E_FRAME_SIZE = 6
    H2E_REFUSED = 7
    H2E_CANCEL = 8
    H2E_COMPRESSION = 9
    H2E_CALM = 11

cdef enum:
    WIN_MAX = 2147483647          # 2^31-1: the largest flow-control window (RFC 9113 6.9.1)
    FRAME_MIN = 16384             # SETTINGS_MAX_FRAME_SIZE's default and floor (RFC 9113 6.5.2)
    FRAME_MAX = 16777215          # ... and its ceiling (2^24-1)
    MAX_CONTINUATION = 64         # CONTINUATION frames per header block (h2's CONTINUATION_BACKLOG)
    CLOSED_MEMORY = 256           # closed streams remembered, to tell them from never-opened ones: more than
                                  # the 2 x 100 a burst can open (and we refuse) at once, ~17 KB at most
    CLOSED_BY_US = 1              # ... closed by our RST_STREAM: its late frames are ignored
    CLOSED_OTHER = 2              # ... by END_STREAM both ways or the client's RST_STREAM


cpdef bytes frame_bytes(int ftype, int flags, int sid, bytes payload)
cpdef bytes goaway_bytes(long long last_sid, long long code)


cdef class H2Event:
    cdef readonly int kind
    cdef readonly int stream_id
    cdef readonly list headers
    cdef readonly bytes data
    cdef readonly Py_ssize_t flow_controlled_length
    cdef readonly bint stream_ended
    cdef readonly long long error_code
    cdef readonly long long last_stream_id
    cdef readonly bytes ping_data


cdef class H2StreamState:
    cdef int sid
    cdef bint rx_closed           # END_STREAM received
    cdef bint tx_closed           # END_STREAM sent
    cdef long long out_win        # what we may still send
    cdef long long in_win         # what the client may still send
    cdef long long in_max         # the window we advertise (our SETTINGS_INITIAL_WINDOW_SIZE)
    cdef long long in_done        # bytes acknowledged but not yet given back


cdef class H2Wire:
    cdef H2Decoder decoder
    cdef H2Encoder encoder
    cdef dict streams             # sid -> H2StreamState: open or half-closed
    cdef dict closed              # sid -> CLOSED_*: the last CLOSED_MEMORY closed streams
    cdef list out                 # frames to write (data_to_send)
    cdef bytes inbuf              # an unfinished frame (or preface) from the last read
    cdef bint preface_done
    cdef bint settings_seen       # the client's first frame (a SETTINGS, RFC 9113 3.4) arrived
    cdef int last_in              # the highest stream id the client opened
    cdef long long out_conn       # connection window for sending
    cdef long long in_conn        # connection window for receiving
    cdef long long in_conn_max
    cdef long long in_conn_done
    cdef long long peer_initial   # the client's SETTINGS_INITIAL_WINDOW_SIZE
    cdef public Py_ssize_t max_outbound_frame_size
    cdef long long local_initial  # ours
    cdef int local_max_streams
    cdef Py_ssize_t local_max_headers
    cdef int cont_sid             # a header block in progress on this stream (0: none)
    cdef bint cont_end            # its HEADERS had END_STREAM
    cdef bint cont_selfdep        # its HEADERS depended on itself (a stream error once decoded)
    cdef int cont_frames
    cdef list cont_block

    cdef int frame(self, int ftype, int flags, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n,
                   list events) except -1
    cdef int on_data(self, int flags, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n, list events) except -1
    cdef int on_headers(self, int flags, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n,
                        list events) except -1
    cdef int on_block(self, list events) except -1
    cdef int on_settings(self, int flags, bytes buf, Py_ssize_t at, Py_ssize_t n, list events) except -1
    cdef int on_window(self, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n, list events) except -1
    cdef int fixed(self, int sid, bint on_stream, Py_ssize_t n, Py_ssize_t size, str what) except -1
    cdef H2StreamState known(self, int sid, str what, list events)
    cdef int conn_error(self, int code, str why) except -1
    cdef void stream_error(self, H2StreamState st, int sid, int code, list events)
    cdef void forget(self, H2StreamState st, int how)
    cdef void emit(self, int ftype, int flags, int sid, bytes payload)
    cpdef list receive_data(self, bytes data)
    cpdef void increment_flow_control_window(self, long long n)
    cpdef void send_headers(self, int sid, list headers, bint end_stream=*)
    cpdef void send_data(self, int sid, bytes data, bint end_stream=*)
    cpdef void end_stream(self, int sid)
    cpdef void reset_stream(self, int sid, int error_code=*)
    cpdef void acknowledge_received_data(self, Py_ssize_t n, int sid)
    cpdef Py_ssize_t local_flow_control_window(self, int sid)
    cpdef void close_connection(self, int error_code=*, int last_stream_id=*)
    cpdef bytes data_to_send(self)
