"""The lifecycle policy's package: a route's `lifecycle` key (deprecation, sunset, successor), its headers,
its 410 after the sunset and fastgw_deprecated_requests_total."""
