"""Evidence tools: metrics with bootstrap confidence intervals, operating thresholds, paired run comparison, report.

Modules import each other by full path (cxr_fast.evaluate.<module>); this package namespace exports nothing.
"""
