"""The process model: master, workers, PID file, privileges, status."""
