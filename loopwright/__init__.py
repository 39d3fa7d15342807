"""loopwright: keeps LLMs in production improving without ever getting worse."""

__version__ = "0.1.0"
