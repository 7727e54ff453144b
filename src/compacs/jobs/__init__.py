"""Background work claimed from the index: compression (forwarding comes later)."""
