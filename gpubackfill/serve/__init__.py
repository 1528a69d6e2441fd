"""Service mode and the shared embedded store: the REST API (``api``), the
scheduler that runs queued jobs (``scheduler``), the Prometheus collector
(``metrics``), alerts (``alerts``), and the process that holds the embedded
chDB store for other commands (``holder``).

Each sits on ``BackfillService``; nothing below this package imports it.
Importing the package loads none of its modules.
"""
