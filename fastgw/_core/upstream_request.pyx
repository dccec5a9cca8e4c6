# The request an upstream receives (included by worker.pyx): built once per request from the client's
# head and the route, after the route's policies ran and before the upstream is acquired (the target is
# picked here). HTTP/1.1 upstreams take it as a head (upstream_head), HTTP/2 upstreams as a field list
# (upstream_fields); both carry the same fields, in the same order.

from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

from fastgw._core.wire cimport feq


cdef inline bint pick_target(Exchange ex, RouteRT route):
    """The target is picked here, once per request (both forms): a request without Host carries the
    address of the target it reaches (acquire connects to it). False: no target is available."""
    ex.target = route.group.pick(ex)
    if ex.target is None:
        return False
    ex.counted = route.group.balance == B_LEAST_REQUEST      # pick counted it in flight
    return True


# The fixed text of upstream_head's lines.
cdef bytes UH_LINE = b" HTTP/1.1\r\nHost: "
cdef bytes UH_XFF = b"X-Forwarded-For: "
cdef bytes UH_PROTO = b"\r\nX-Forwarded-Proto: "
cdef bytes UH_FHOST = b"\r\nX-Forwarded-Host: "
cdef bytes UH_RID = b"\r\nX-Request-ID: "
cdef bytes UH_TSTATE = b"\r\ntracestate: "


cdef bytes upstream_head(Exchange ex, RouteRT route, RequestHead h):
    """The HTTP/1.1 request head sent upstream: the path without the stripped prefix, the forwarded
    fields less those the route removes, the route's and the policies' additions, then the fields the
    gateway owns (X-Forwarded-*, X-Request-ID, trace context) and framing rebuilt by fastgw.
    Written straight into one bytes object sized first (a list of ~20 parts joined cost ~1,600
    instructions per request: appends, list growth, the join's per-part loop)."""
    cdef bytes path = h.path
    cdef list pieces = h.pieces
    cdef bytes host, tail, fields = None
    cdef bytes req_add = route.req_add, extra = ex.up_extra, xff = h.xff, ts = h.tracestate
    cdef Downstream cl = ex.client
    cdef Py_ssize_t total, n
    cdef bytes out
    cdef char* d
    if route.strip:
        path = stripped(route, path)
    if h.drop is not None or route._req_remove is not None:
        pieces = filter_headers(pieces, h.drop, route.req_remove_names, route.req_remove_lengths)
    if not pick_target(ex, route):
        return None
    host = h.host if h.host else ex.target.hostport
    if h.chunked:
        tail = b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    elif h.content_length >= 0:
        tail = b"\r\nContent-Length: %d\r\n\r\n" % h.content_length
    else:
        tail = b"\r\n\r\n"
    total = _blen(h.method) + _blen(path) + _blen(h.query) + _blen(host) + _blen(cl.peer) \
        + _blen(cl.proto) + _blen(ex.rid) + _blen(ex.traceparent_line()) + PyBytes_GET_SIZE(tail) \
        + PyBytes_GET_SIZE(UH_LINE) + PyBytes_GET_SIZE(UH_XFF) + PyBytes_GET_SIZE(UH_PROTO) \
        + PyBytes_GET_SIZE(UH_RID) + 3          # (the SP after the method, the CRLF after Host)
    n = parts_size(pieces)
    if n < 0:
        fields = b"".join(pieces)              # (a policy put other buffers there: the general path)
        n = PyBytes_GET_SIZE(fields)
    total += n
    if req_add:
        total += PyBytes_GET_SIZE(req_add)
    if extra is not None:
        total += PyBytes_GET_SIZE(extra)
    if xff is not None:
        total += PyBytes_GET_SIZE(xff) + 2
    if h.host:
        total += PyBytes_GET_SIZE(UH_FHOST) + PyBytes_GET_SIZE(h.host)
    if ts is not None:
        total += PyBytes_GET_SIZE(UH_TSTATE) + PyBytes_GET_SIZE(ts)
    out = PyBytes_FromStringAndSize(NULL, total)
    d = PyBytes_AS_STRING(out)
    d = put_bytes(d, h.method)
    d[0] = 32                                   # ' '
    d = put_bytes(d + 1, path)
    d = put_bytes(d, h.query)
    d = put_bytes(d, UH_LINE)
    d = put_bytes(d, host)
    d[0] = 13
    d[1] = 10
    d += 2
    d = put_parts(d, pieces) if fields is None else put_bytes(d, fields)
    if req_add:
        d = put_bytes(d, req_add)
    if extra is not None:
        d = put_bytes(d, extra)
    d = put_bytes(d, UH_XFF)
    if xff is not None:
        d = put_bytes(d, xff)
        d[0] = 44                               # ", "
        d[1] = 32
        d += 2
    d = put_bytes(d, cl.peer)
    d = put_bytes(d, UH_PROTO)
    d = put_bytes(d, cl.proto)
    if h.host:
        d = put_bytes(d, UH_FHOST)
        d = put_bytes(d, h.host)
    d = put_bytes(d, UH_RID)
    d = put_bytes(d, ex.rid)
    d = put_bytes(d, ex.tp)                          # (traceparent_line made it above)
    if ts is not None:                          # valid, within bounds, with a continued trace
        d = put_bytes(d, UH_TSTATE)
        d = put_bytes(d, ts)
    filled(put_bytes(d, tail), out)
    return out


cdef inline Py_ssize_t _blen(bytes b) except -1:
    """The length of a part that must be bytes (None raises, as the join it replaces did)."""
    if b is None:
        raise TypeError("upstream request head: a part is None")
    return PyBytes_GET_SIZE(b)


cdef list upstream_fields(Exchange ex, RouteRT route, RequestHead h):
    """The same request as upstream_head, as an HTTP/2 field list (pseudo-fields first, names
    lowercase): Host becomes :authority; the body is DATA, so the only framing field kept is
    Content-Length, when the client gave one."""
    cdef bytes path = h.path
    cdef list pieces = h.pieces
    cdef list fields
    cdef Py_ssize_t i
    cdef Downstream cl = ex.client
    if route.strip:
        path = stripped(route, path)
    if h.drop is not None or route._req_remove is not None:
        pieces = filter_headers(pieces, h.drop, route.req_remove_names, route.req_remove_lengths)
    if not pick_target(ex, route):
        return None
    fields = [(b":method", h.method), (b":scheme", b"http" if route.group.ssl is None else b"https"),
              (b":authority", h.host if h.host else ex.target.hostport), (b":path", path + h.query)]
    for i in range(0, len(pieces), 4):
        fields.append(((<bytes>pieces[i]).lower(), pieces[i + 2]))
    if route.req_add:
        _h2_lines(route.req_add, fields)
    if ex.up_extra is not None:
        _h2_lines(ex.up_extra, fields)
    fields.append((b"x-forwarded-for", cl.peer if h.xff is None else h.xff + b", " + cl.peer))
    fields.append((b"x-forwarded-proto", cl.proto))
    if h.host:
        fields.append((b"x-forwarded-host", h.host))
    fields.append((b"x-request-id", ex.rid))
    fields.append((b"traceparent", ex.traceparent()))
    if h.tracestate is not None:
        fields.append((b"tracestate", h.tracestate))
    if h.content_length >= 0:
        fields.append((b"content-length", b"%d" % h.content_length))
    return fields


cdef bytes stripped(RouteRT route, bytes path):
    """The path sent upstream on a strip_prefix route: without the route's prefix, never empty."""
    path = path[route.strip:]
    if len(path) == 0 or path[0] != 47:
        path = b"/" + path
    return path


cdef list filter_headers(list pieces, object drop, tuple remove, uint64_t remove_lengths):
    """Pieces without the headers named in `drop` or `remove` (see _removed): `pieces` itself when none
    is (the common case: nothing allocated)."""
    cdef list out = None
    cdef Py_ssize_t i, n = PyList_GET_SIZE(pieces)
    cdef uint64_t lengths = remove_lengths | name_lengths(drop)
    for i in range(0, n, 4):
        if _removed(<bytes>PyList_GET_ITEM(pieces, i), drop, remove, lengths):
            if out is None:
                out = pieces[:i]
        elif out is not None:
            out += pieces[i:i + 4]
    return pieces if out is None else out


cdef inline bint _removed(bytes name, object drop, tuple remove, uint64_t lengths) except -1:
    """Whether a header named `name` is removed: named in `drop` or `remove` (folded: lowercase, "_" read
    as "-", as upstreams that fold names read them; fastgw/headers.py). A name is compared only when its
    length is the length of a name in the sets (`lengths`; the route's part, name_lengths(remove), is
    computed at config load); with the route's `remove` names (a tuple, a few) folded while compared, in
    C, and the per-request `drop` set (Connection's tokens, rare) by a folded copy."""
    cdef Py_ssize_t j, k = PyBytes_GET_SIZE(name)
    cdef const char* p = PyBytes_AS_STRING(name)
    cdef PyObject* nm
    if not (lengths >> (k if k < 63 else 63)) & 1:
        return False
    if remove is not None:
        for j in range(PyTuple_GET_SIZE(remove)):
            nm = PyTuple_GET_ITEM(remove, j)
            if PTR_BYTES_SIZE(nm) == k and feq(p, k, PTR_BYTES_DATA(nm)):
                return True
    if drop is not None:
        name = name.lower()
        if memchr(<const char*>name, 95, k) != NULL:       # '_'
            name = name.replace(b"_", b"-")
        return name in drop
    return False
