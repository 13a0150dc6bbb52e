"""jobctl: a command-line job runner with a durable queue."""

__version__ = "0.1.0"
