"""The package version, in one place (the facade and result files read it from here)."""

__version__ = "0.1.0"
