"""A job's life: what it is (``plan``), the rules it follows (``machine``),
what a chunk reports (``result``) and the loop that runs it (``driver``)."""
