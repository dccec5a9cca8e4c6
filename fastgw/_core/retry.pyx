# The one retry decision of an exchange (included by worker.pyx): whether a failed upstream attempt is
# tried again, where and when, and the access log's record of the attempts. The failure path
# (Exchange.failed) asks it; the exchange's upstream drivers carry the retry out (acquire).


def _retry_now(Exchange ex, bint fresh):
    """A retry's backoff is over: the next try (a fresh connection when it goes to the same target)."""
    ex.retry_handle = None
    if not ex.done and not ex.client.closed:
        if ex.route.h2up:
            ex.drv.retry(ex)                    # a new stream (h2call.pyx)
        else:
            ex.acquire(fresh)


cdef bint decide_retry(Exchange ex, GatewayError err):
    """The one retry decision. An upstream failure before any response byte went to the client is
    tried again, on another target when there is one, when all of these hold:
      - its condition (err.cond) is in the upstream's retry.on, and retry.attempts are not used up;
      - nothing was sent (connect-failure), or the request may be repeated: an idempotent method
        [RFC 9110 9.2.2] or `retry_safe` (a policy validated its Idempotency-Key), with its body kept
        whole (replay_buffer);
      - the retry budget admits it (retried requests in flight within budget_percent of the requests
        in flight, or budget_min), so a failing upstream never meets a retry storm (a retry after a
        failure that sent nothing anywhere adds no upstream work: always admitted, no place taken);
      - after a full-jitter backoff, some of the route's deadline (timeout) is left: the try gets
        per_try_timeout or what remains.
    An HTTP/2 upstream's pool re-sends refused streams itself (upstream_h2.pyx) before it comes to this;
    here its requests without a body are retried on a new stream by the same rules (its body went to the
    stream as it came and is not kept here)."""
    cdef RouteRT route = ex.route
    cdef UpstreamGroup g = route.group
    cdef int cond = err.cond
    cdef double now, delay, remaining
    cdef bint unsent
    cdef Target t, failed = ex.target
    cdef UpstreamConn c
    if failed is None or not (g.retry_on >> cond) & 1:
        return False
    if route.h2up and (ex.has_body or route.grpc or ex.transcode is not None):
        return False
    if (ex.resent if cond == RC_SEND else ex.tries >= g.attempts):
        return False                        # (a stale pooled connection: once, not an attempt)
    if cond != RC_CONNECT and cond != RC_REFUSED:       # sent: the upstream may have acted on it
        if not ex.retry_safe and IDEMPOTENT.find(b" " + ex.head.method + b" ") < 0:
            return False
        if ex.has_body and ex.replay is None:       # not kept: over replay_buffer
            return False
    now = ex.client.w.clock.now
    delay = 0.0 if cond == RC_SEND else g.backoff_delay(ex.tries + 1)
    remaining = ex.t0 * 1e-9 + route.deadline - now - delay
    if remaining <= 0:
        return False
    if not ex.retrying:
        unsent = cond == RC_CONNECT or cond == RC_REFUSED or cond == RC_SEND
        if not g.retry_admit(unsent):
            return False
        ex.retrying = not unsent            # (a retry that sent nothing before holds no budget place)
    if ex.attempts is None:
        ex.attempts = []
    ex.attempts.append(f"{failed.hostport.decode()} {err.kind or err.status}")
    g.count_retry(cond)
    if cond == RC_SEND:
        ex.resent = True
    else:
        ex.tries += 1
    ex.retried = True
    ex.retried_err = err
    ex.try_timeout = route.try_timeout if route.try_timeout < remaining else remaining
    if ex.up is not None:                 # an answer retried on its status: not relayed
        c = ex.up
        ex.up = None
        c.ex = None
        c.abort()
    ex.sent = False
    ex.out = None
    if ex.replay is not None:
        ex.pending = ex.replay if ex.pending is None else ex.replay + ex.pending
        ex.pending_bytes = sum(len(<bytes>x) for x in ex.pending)
        ex.replay = None
    t = failed
    if ex.head.host:                      # (without Host, the head carries the target's address)
        t = g.pick_other(ex, failed)
        if t is not failed and ex.counted:
            failed.finish()                 # pick_other counted the new one in flight
    ex.target = t
    ex.retry_handle = ex.client.loop.call_later(delay, _retry_now, ex, t is failed)
    return True


cdef str attempt_log(Exchange ex):
    """The access log's `attempts`: each try's target and outcome, the last one's status included;
    None when there was one try."""
    if ex.attempts is None:
        return None
    last = ex.target.hostport.decode() if ex.target is not None else "-"
    return "; ".join(ex.attempts + [f"{last} {ex.err.kind if ex.err is not None else ex.status}"])
