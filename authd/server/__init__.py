"""The TokenReview webhook server: wire format, HTTP layer, TLS material, kubeconfig, daemon."""
