"""What a client and a worker say to each other for ``exec`` and file copies.

Both sides import these modules: the wire's subjects, headers and path rule (:mod:`.wire`),
the worker's heartbeat and the client's patience (:mod:`.heartbeat`), and the codes an
``exit`` or ``done`` carries with the errors a client raises for them (:mod:`.answer_codes`).
They live apart from ``workers/`` so that a client never imports a worker's package.
"""
