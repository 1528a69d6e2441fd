"""Everything that runs a job: the driver loop (``driver``), where chunks run
(``cluster``), one chunk on a worker (``chunk``, over ``task``, ``lease``,
``shared_io`` and ``failures``) and chunk deadlines (``watchdog``)."""
