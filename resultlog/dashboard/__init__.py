"""``resultlog dashboard``: tasks, timelines, rates and lag in the browser (read-only).

Install with the ``dashboard`` extra (``pip install resultlog[dashboard]``); see
docs/dashboard.md. Modules: :mod:`.app` (routes and pages), :mod:`.tasklist` (keyset
pages over ``task_summary``), :mod:`.queries` (history reads), :mod:`.status` (lag,
dead letters, chords), :mod:`.live` (pushed transitions), :mod:`.templating`,
:mod:`.commands` (the command line).
"""
