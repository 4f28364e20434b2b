"""Built-in segmenter adapters."""
