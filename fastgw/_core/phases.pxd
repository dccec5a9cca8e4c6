# The policy phases' shared types and header-view helpers (phases.pyx); cimported by the exchange.

cdef class Respond:
    cdef readonly int status
    cdef readonly list headers        # [(name bytes, value bytes), ...], checked
    cdef readonly bytes body

cpdef bytes check_name(object name)
cpdef bytes check_value(object value)
cdef list parse_lines(bytes block, list out)
cdef bytes join_pairs(list pairs)
cpdef object first(list view, bytes lname)
cpdef int drop(list view, object name) except -1
cpdef int replace(list view, object name, object value) except -1
