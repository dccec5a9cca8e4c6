"""What the gateway tells its operators: the lifecycle log, the access log and the metrics."""
