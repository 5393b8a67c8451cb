"""What every gRPC endpoint of the product shares, client and server alike.

Clients in the castore and the servers in ``builder.server`` both build on it,
so an address, a family's generated modules and an error's status code mean
the same thing on either side. It lives in the castore because that layer may
not depend on the server layer, while the server may depend on the castore.
"""
