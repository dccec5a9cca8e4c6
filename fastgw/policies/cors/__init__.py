"""The CORS policy's package: [cors.NAME], a route's `cors` key, preflight answers and CORS response
headers."""
