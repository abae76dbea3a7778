"""The expression-prediction benchmark of comtip_sc, run from a checkout: ``python -m benchmarks --help``.

It is not part of the installed library: it imports comtip_sc like any user script does.
"""
