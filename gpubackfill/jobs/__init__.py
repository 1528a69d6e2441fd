"""A job's life: what it is (``plan``), the rules it follows (``machine``),
and what a chunk reports (``result``); ``engine/`` runs it."""
