# Constants of the policies' compiled halves (see gates.pyx).

# Decision counters, in the order of fastgw.policies.ratelimit.DECISIONS.
cdef enum:
    D_ALLOWED = 0
    D_RATE = 1
    D_QUOTA = 2
    D_SHADOW = 3

# Key parts (a limit's `key`): fastgw.policies.ratelimit.KeySpec.
cdef enum:
    P_CONSUMER = 0
    P_IP = 1
    P_ROUTE = 2
    P_HEADER = 3


from fastgw._core.http1 cimport RequestHead


cdef class Gate:
    cdef public bint has_lines           # response_lines gives this request's lines for every answer
    cpdef object on_request(self, object ex)
    cdef bytes response_lines(self, RequestHead h)
