"""``python -m gdx.cli``: the same as the ``gdx`` console script (torchrun starts it so)."""

from gdx.cli.main import main

main()
