"""Built-in generator adapters."""
