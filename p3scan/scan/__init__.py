"""The scan pipeline, its outcome, scanning services, external programs."""
