"""``resultlog dashboard``: tasks, timelines, rates and lag in the browser (read-only).

Install with the ``dashboard`` extra (``pip install resultlog[dashboard]``); see
docs/dashboard.md.
"""
