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


cdef class PolicyExchange:
    # The part of the exchange (exchange.pxd: Exchange derives from it) the compiled gates read and write
    # in C; Python policies reach the same through its methods and `identity`.
    cdef RequestHead head
    cdef bytes up_extra                   # header lines added by policies to the upstream request
    cdef bytes resp_extra                 # header lines added by policies to the response (any status)
    cdef list resp_view                   # while on_response runs: the response's header blocks (bytes), or
                                          #   once a policy read or edited them (`viewed`), its (name, value) pairs
    cdef bint viewed
    cdef public object identity           # set by an auth policy (the verified consumer), read by later ones
    cpdef object header(self, bytes lname)
    cpdef object add_upstream_lines(self, bytes lines)
    cpdef object add_response_lines(self, bytes lines)


cdef class Chain:
    cdef tuple pols
    cdef object finish
    cdef object run(self, object ex)


cdef class Gate:
    cdef public bint has_lines           # response_lines gives this request's lines for every answer
    cdef public Py_ssize_t slot          # this policy's index in its route's policies (its state slot)
    cdef public Py_ssize_t nslots        # how many policies the route has (the length of ex.states)
    cpdef object on_request(self, object ex)
    cpdef object state(self, object ex)
    cpdef set_state(self, object ex, object value)
    cdef bytes response_lines(self, RequestHead h)
    cdef object head_request(self, RequestHead h)
