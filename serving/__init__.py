"""TF Serving assets, a REST/gRPC client and a local development server."""
