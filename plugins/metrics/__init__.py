"""Built-in metric adapters."""
