"""Control loops that keep the tables in shape, off the request path.

splits.py cuts a partition in two once it grows past a size (DESIGN.md, autoadmin).
"""
