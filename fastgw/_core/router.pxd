# Declarations of the immutable route trie (see router.pyx for the matching rule).

cdef struct _Req:
    const char* buf
    Py_ssize_t* start           # start[i] .. end[i]: byte offsets of segment i in buf
    Py_ssize_t* end
    Py_ssize_t n                # number of segments; when the path is deeper than any pattern, cap + 1


cdef class _Route:
    cdef object value
    cdef frozenset methods      # None = any method; GET already implies HEAD here
    cdef tuple params           # ((name, segment index), ...) or None
    cdef tuple hit              # prebuilt (0, value, None) for routes without params


cdef class _Node:
    cdef dict lit               # literal segment (bytes) -> _Node
    cdef _Node param            # the {param} child, or None
    cdef list exact             # routes whose pattern ends at this node
    cdef list prefix            # prefix routes ("/.../*") whose literal part ends at this node
    cdef frozenset exact_allow  # union of exact routes' methods (for 405)
    cdef frozenset prefix_allow # union of prefix routes' methods (for 405)


cdef class Router:
    cdef dict _hosts            # lowercase host (bytes) -> _Node
    cdef _Node _any             # routes without a host
    cdef Py_ssize_t _cap        # deepest pattern + 1: segments we ever need to look at
    cdef dict _allow_cache      # frozenset of methods -> b"GET, HEAD, ..."

    cpdef tuple match(self, bytes method, bytes host, bytes path)
    cdef object _search(self, _Node table, _Req* rq, bytes method)
