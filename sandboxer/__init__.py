"""sandboxer: establish isolated sandboxes on many backends through one event-sourced API."""

from sandboxer.bus import nats_websockets

__version__ = "0.1.0"

nats_websockets.install()  # before anything imports nats-py: see the module
