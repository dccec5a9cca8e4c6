# Declarations of the reference request reader (see http1_llhttp.pyx).

from fastgw._core.http1 cimport RequestReader


cdef class LlhttpRequestReader(RequestReader):
    # (the limits, the state, the head, its FieldState, the events and _fail are RequestReader's)
    cdef object _parser
    cdef object _feed
    cdef object _get_method
    cdef object _keep_alive
    cdef list _url_parts
    cdef Py_ssize_t _url_len
    cdef Py_ssize_t _head_fed
    cdef long long _chunk_bytes
    cdef long long _feed_acc
    cdef bytes _line               # the fed slice that began while idle: usually starts with the request line

    cdef int _feed1(self, bytes data) except -1
    cdef int _reject(self, int status, str slug, str detail) except -1
