"""gRPC plumbing shared by the services: errors, interceptors, server host, logging, metrics, TLS."""
