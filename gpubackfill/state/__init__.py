"""Job and chunk state: a pure state machine and its Redis implementation."""
