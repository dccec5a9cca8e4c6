"""The WebSocket policy's package: a route's `websocket` key, the [websocket] section, the handshake's
checks (version, key, Origin, connection caps) and the tunnel's session (timers, metrics)."""
