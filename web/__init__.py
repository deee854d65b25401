"""The web dashboard (``keepa-fleet web``): ``web.queries`` reads the deals database,
read-only; static files under ``web/static`` (vendored uPlot, see its NOTICE)."""
