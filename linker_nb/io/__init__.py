"""I/O: references, checkpoint formats, architecture records, the registry, models and the embedded text."""
