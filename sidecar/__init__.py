"""aibrix-sidecar: Kubernetes probes and Prometheus metrics for a model download and its engine."""
