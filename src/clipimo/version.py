"""The package version, in one place (the adapter, classifier and result files record it)."""

__version__ = "0.1.0"
