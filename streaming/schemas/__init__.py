"""Request schemas: one module per upstream API, each validating a body into a typed request."""
