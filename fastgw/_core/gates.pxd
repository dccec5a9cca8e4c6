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
    cdef public Py_ssize_t slot          # this policy's index in its route's policies (its state slot)
    cdef public Py_ssize_t nslots        # how many policies the route has (the length of ex.states)
    cpdef object on_request(self, object ex)
    cpdef object state(self, object ex)
    cpdef set_state(self, object ex, object value)
    cdef bytes response_lines(self, RequestHead h)
    cdef object head_request(self, RequestHead h)
