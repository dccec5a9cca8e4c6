# Constants of the access-log formatter (see accesslog.pyx).

cdef enum:
    FIXED = 720              # room for a line's keys, numbers and constant parts
