"""What every hosted backend (E2B, Daytona, Modal, the metered stub) shares: endpoint and key
settings, the HTTP boundary that maps provider errors to ours, our labels on what we make,
and the create that never makes two."""
