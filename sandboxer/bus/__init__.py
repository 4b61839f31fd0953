"""The NATS JetStream boundary: the nats-server process, connections, streams, event store."""
