"""vlrb's version (one place: the package, pyproject.toml and every saved artifact read it)."""
__version__ = "0.1.0"
