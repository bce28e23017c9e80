"""What a worker tells its operators: Prometheus metrics and health pages
(metrics, with its pure half metrics_core) and the periodic progress line."""
