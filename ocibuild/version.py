"""ocibuild's version: in cache keys and image history, so that another version never trusts this one's bytes."""

__version__ = "0.1.0"
