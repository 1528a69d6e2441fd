"""Everything that runs a job: the driver loop (``driver``), where chunks run
(``cluster``), chunk deadlines (``watchdog``) and driver ownership (``lease``)."""
