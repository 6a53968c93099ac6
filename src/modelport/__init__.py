"""modelport: convert Hugging Face models to on-device formats and prove they still compute the same thing."""

__version__ = "0.1.0"
