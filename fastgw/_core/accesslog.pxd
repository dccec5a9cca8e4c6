# Constants of the access-log formatter (see accesslog.pyx).

cdef enum:
    FIXED = 480              # room for a line's keys, numbers and constant parts
