"""The version of cotune, apart from the package root so every layer can read it without
importing all the others (``pyproject.toml`` reads it from here too)."""

__version__ = "0.1.0"
