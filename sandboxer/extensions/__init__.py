"""Backends that establish sandboxes, behind one :class:`~sandboxer.extensions.base.Extension` protocol."""
