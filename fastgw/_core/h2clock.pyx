# cython: language_level=3
# How long the client's HTTP/2 input has been inside an unfinished header block (h2engine.pyx's
# H2Conn feeds it every read).
#
# Rule: server.limits.header_timeout bounds a header block from its first byte to its last, whatever else
# arrives meanwhile. A HEADERS frame without END_HEADERS must be followed by CONTINUATION frames only (RFC
# 9113 6.10), and the wire layer (h2frames.pyx) hands nothing of the block to the engine before
# END_HEADERS, so a client that sends 1-byte CONTINUATION frames (or a HEADERS frame a byte at a time) keeps the connection busy for ever
# while each byte looks like activity: the CONTINUATION slowloris. The connection preface is timed the same
# way, and so is a frame header split between reads (9 bytes; a client that stops inside one is stuck).
# [nginx times an unfinished frame with client_header_timeout and ends the connection with GOAWAY
# PROTOCOL_ERROR; H2Conn.check does the same.]
#
# The clock follows frame boundaries only (the 9-byte headers: 24-bit length, type, flags, stream id); the
# wire layer parses the frames. Frame types: HEADERS 1, CONTINUATION 9; flag END_HEADERS 4.


cdef class HeaderClock:
    def __cinit__(self, Py_ssize_t preface, double now):
        self.fskip = preface          # the preface is timed like a header block
        self.fblock = True
        self.fend = True
        self.since = now

    cpdef void feed(self, bytes data, double now):
        """Advance over one read; `since` is then the start of the unfinished part (`now` when it began in
        this read), or 0."""
        cdef const unsigned char* p = data
        cdef Py_ssize_t n = len(data), i = 0, k
        cdef unsigned char* hd
        cdef bint broke = False              # between frames, outside a block, somewhere in this read
        while i < n:
            if self.fskip:
                k = n - i
                if k > self.fskip:
                    k = self.fskip
                i += k
                self.fskip -= k
                if self.fskip == 0 and self.fend:
                    self.fblock = self.fend = False
                    broke = True
                continue
            if self.fhave == 0 and n - i >= 9:
                hd = <unsigned char*>p + i   # the whole header is here: read it in place
                i += 9
            else:
                while self.fhave < 9 and i < n:
                    self.fhdr[self.fhave] = p[i]
                    self.fhave += 1
                    i += 1
                if self.fhave < 9:
                    break
                hd = self.fhdr
            self.fhave = 0
            self.fskip = (<Py_ssize_t>hd[0] << 16) | (<Py_ssize_t>hd[1] << 8) | hd[2]
            if hd[3] == 1 or hd[3] == 9:
                self.fblock = True
                if hd[4] & 4:
                    if self.fskip:
                        self.fend = True
                    else:
                        self.fblock = False
                        broke = True
            elif not self.fblock:
                broke = True
        if self.fblock or self.fhave:
            if broke or not self.since:
                self.since = now
        else:
            self.since = 0
