"""The transcoding policy's package: a route's `transcode` key (HTTP/JSON to gRPC), the descriptors and
their google.api.http rules, the proto3 JSON mapping and the gRPC status table."""
