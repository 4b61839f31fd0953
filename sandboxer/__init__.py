"""sandboxer: establish isolated sandboxes on many backends through one event-sourced API."""

__version__ = "0.1.0"
