"""Beyond the Box: the Python implementation of every example's roles (see examples/README.md)."""
