"""The DIMSE face of compacs: one module per service, each handler thin."""
