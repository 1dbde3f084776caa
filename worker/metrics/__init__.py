"""Metrics: what the service is doing now (``snapshot``), what its workers observed
(``observe``, aggregated in Redis), the Prometheus exporter and ``imagegen top``."""
