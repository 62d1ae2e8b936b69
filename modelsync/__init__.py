"""modelsync: keep a ModelsLab model catalogue declared in git."""

__version__ = "0.1.0"
