from gdx.causal._old import *  # noqa: F401,F403  (temporary during the split)
from gdx.causal._old import EffectRunner, random_units, _JsonResult, RemovalRow, MIN_SIDE_COVERAGE  # noqa: F401
