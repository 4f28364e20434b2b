"""Static HTML reports of dissection runs (``gdx report``) and comparisons (``gdx compare``).

>>> import gdx.report
>>> index = gdx.report.write_report("runs/scene-scene")   # runs/scene-scene/report/index.html
>>> gdx.report.write_compare("runs/a/layer4", "runs/b/layer4", "runs/compare")
"""

from gdx.report.build import load_run, write_compare, write_report
from gdx.causal.saved import find_causal_results

__all__ = ["find_causal_results", "load_run", "write_compare", "write_report"]
