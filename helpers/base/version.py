"""The package's version (also ``helpers.__version__``; pyproject.toml states the same)."""

__version__ = "0.1.0"
