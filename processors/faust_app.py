"""The processor as a plain faust app, for ``faust -A resultlog.processors.faust_app worker``.

Settings come from the environment (``RESULTLOG_*``). ``resultlog process`` runs the
same app and also creates the topics first; with the plain faust command, create them
beforehand (the emitter does so on start).
"""

from __future__ import annotations

from resultlog.processors.app import Processor
from resultlog.settings import Settings

processor = Processor(Settings.from_env())
app = processor.app
