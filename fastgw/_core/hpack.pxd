# Declarations of the HPACK codec (see hpack.pyx).

cdef enum:
    HP_CACHE_MAX = 4096      # encoded (name, value) pairs an H2Encoder keeps before starting afresh


cdef class H2Decoder:
    cdef public Py_ssize_t max_header_list_size
    cdef public Py_ssize_t max_allowed_table_size
    cdef Py_ssize_t maxsize           # the table's current size limit (changed by size updates)
    cdef Py_ssize_t size              # sum of the entries' sizes (RFC 7541 4.1: len(name) + len(value) + 32)
    cdef list dyn                     # the dynamic table, oldest first
    cdef void evict(self, Py_ssize_t room)
    cdef tuple entry(self, Py_ssize_t idx)

cdef class H2Encoder:
    cdef dict cache
    cdef Py_ssize_t ncache
    cdef bytes pending           # a dynamic table size update owed at the start of the next block
    cpdef bytes encode(self, object headers, bint huffman=*)
    cdef bytes encode1(self, bytes name, bytes value)
