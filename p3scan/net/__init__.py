"""The wire: streams, routes and destinations, TLS, protocol descriptors."""
