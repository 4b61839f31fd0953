"""ext.modal: sandboxes on Modal through the pinned ``modal`` SDK (gRPC), an optional extra."""
