"""The State Hub projection: lifecycle events POSTed to the State Hub
(docs/integrations/state-hub.md). ``body.py`` is pure, ``status.py`` keeps what was
delivered, ``follower.py`` is the role."""
