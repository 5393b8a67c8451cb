"""gRPC faces of the product: thin servicers, status mapping and server assembly."""
