# Declarations of the header-block clock (see h2clock.pyx).

cdef class HeaderClock:
    cdef readonly double since    # when the unfinished header block (or frame header) began; 0: none
    cdef Py_ssize_t fskip         # bytes of the current frame's payload (or of the preface) still to come
    cdef int fhave                # bytes of the next frame header received so far (0..8)
    cdef unsigned char fhdr[9]
    cdef bint fblock              # inside a header block (or the preface)
    cdef bint fend                # the end of the current frame is the end of the header block
    cpdef void feed(self, bytes data, double now)
