# The request an upstream receives (included by worker.pyx): built once per request from the client's
# head and the route, after the route's policies ran and before the upstream is acquired (the target is
# picked here). HTTP/1.1 upstreams take it as a head (upstream_head), HTTP/2 upstreams as a field list
# (upstream_fields); both carry the same fields, in the same order.

from fastgw._core.wire cimport feq


cdef inline bint pick_target(Exchange ex, RouteRT route):
    """The target is picked here, once per request (both forms): a request without Host carries the
    address of the target it reaches (acquire connects to it). False: no target is available."""
    ex.target = route.group.pick(ex)
    if ex.target is None:
        return False
    ex.counted = route.group.balance == B_LEAST_REQUEST      # pick counted it in flight
    return True


cdef bytes upstream_head(Exchange ex, RouteRT route, RequestHead h):
    """The HTTP/1.1 request head sent upstream: the path without the stripped prefix, the forwarded
    fields less those the route removes, the route's and the policies' additions, then the fields the
    gateway owns (X-Forwarded-*, X-Request-ID, trace context) and framing rebuilt by fastgw."""
    cdef bytes path = h.path
    cdef list parts
    cdef list pieces = h.pieces
    if route.strip:
        path = stripped(route, path)
    if h.drop is not None or route._req_remove is not None:
        pieces = filter_headers(pieces, h.drop, route.req_remove_names, route.req_remove_lengths)
    if not pick_target(ex, route):
        return None
    host = h.host if h.host else ex.target.hostport
    parts = [h.method, b" ", path, h.query, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    if pieces:
        parts.extend(pieces)
    if route.req_add:
        parts.append(route.req_add)
    if ex.up_extra is not None:
        parts.append(ex.up_extra)
    parts.append(b"X-Forwarded-For: ")
    if h.xff is not None:
        parts.append(h.xff)
        parts.append(b", ")
    parts.append(ex.client.peer)
    parts.append(b"\r\nX-Forwarded-Proto: ")
    parts.append(ex.client.proto)
    if h.host:
        parts.append(b"\r\nX-Forwarded-Host: ")
        parts.append(h.host)
    parts.append(b"\r\nX-Request-ID: ")
    parts.append(ex.rid)
    parts.append(ex.traceparent_line())        # always: the trace continued or started here
    if h.tracestate is not None:                  # valid, within bounds, with a continued trace
        parts.append(b"\r\ntracestate: ")
        parts.append(h.tracestate)
    if h.chunked:
        parts.append(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    elif h.content_length >= 0:
        parts.append(b"\r\nContent-Length: %d\r\n\r\n" % h.content_length)
    else:
        parts.append(b"\r\n\r\n")
    return concat(parts)


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
    """Pieces without the headers named in `drop` or `remove` (folded: lowercase, "_" read as "-", as
    upstreams that fold names read them; fastgw/headers.py): `pieces` itself when none is (the common
    case: nothing allocated). A name is compared only when its length is the length of a name in the
    sets (`remove_lengths`: name_lengths(remove), computed at config load); with the route's `remove`
    names (a tuple, a few) folded while compared, in C, and the per-request `drop` set (Connection's
    tokens, rare) by a folded copy."""
    cdef list out = None
    cdef Py_ssize_t i, k, n = len(pieces)
    cdef uint64_t lengths = remove_lengths | name_lengths(drop)
    cdef bint hit
    cdef bytes name
    cdef const char* p
    for i in range(0, n, 4):
        name = <bytes>pieces[i]
        k = PyBytes_GET_SIZE(name)
        hit = False
        if (lengths >> (k if k < 63 else 63)) & 1:
            if remove is not None:
                p = PyBytes_AS_STRING(name)
                for nm in remove:
                    if PyBytes_GET_SIZE(<bytes>nm) == k and feq(p, k, PyBytes_AS_STRING(<bytes>nm)):
                        hit = True
                        break
            if not hit and drop is not None:
                name = name.lower()
                if memchr(<const char*>name, 95, k) != NULL:       # '_'
                    name = name.replace(b"_", b"-")
                hit = name in drop
        if hit:
            if out is None:
                out = pieces[:i]
        elif out is not None:
            out += pieces[i:i + 4]
    return pieces if out is None else out
