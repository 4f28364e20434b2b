"""Built-in adapters of gdx, registered through the same hooks as third-party plugins."""
