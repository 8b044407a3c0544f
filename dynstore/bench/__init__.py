"""``dynstore bench``: an open-loop load generator for DynamoDB endpoints, and its reports.

workloads.py (what to send), sender.py (when and how: native/sender.c), loadgen.py (the
generator processes and merging their results), histogram.py (latency histograms),
report.py (table, JSON, chart), cli.py (the command). Needs the ``bench`` extra.
"""
