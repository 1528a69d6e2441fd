"""Where things are kept: candles and labels in ClickHouse
(``clickhouse_store`` over ``clickhouse_client``), job state and telemetry in
Redis (the ``redis`` package, ``telemetry``), and the bundled redis-server."""
