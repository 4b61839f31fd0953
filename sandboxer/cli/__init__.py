"""The ``sandboxer`` command line: one more bus client."""
