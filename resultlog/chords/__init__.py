"""Chords: a set of member tasks whose outcomes, once all are in, complete the chord.

The package, from the contract inwards:

- :mod:`.records` -- the records on the wire (``ChordDeclared``, ``ChordCompleted``,
  ``FailedMember``) and what the fold reports (``ChordProgress``, ``Step``);
  :mod:`.celeryrecords` -- Celery's chord protocol as records (``CeleryChordRecord``).
- :mod:`.declare` -- declaring a chord from worker code, through an emitter.
- :mod:`.fold` -- the pure state machine: a chord's records -> its progress and its one
  completion; :mod:`.celeryfold` its Celery half.
- :mod:`.retention` -- removing completed chords' summaries from the fold's table.
- :mod:`.changelog` -- the fold's tables, one per partition, kept in a changelog topic.
- :mod:`.aggregator` -- the processor's task that runs the fold over the chords topic,
  publishes completions and runs the hooks; :mod:`.fire` fires Celery chords' bodies.
- :mod:`.store` -- the Redis chord view: its layout, writes, reads and waits.
- :mod:`.results` -- ``ChordResult`` / ``AioChordResult``, what callers read.

Imports run one way: records <- fold <- aggregator; records <- store <- results. Nothing
here imports a private name of another module.
"""
