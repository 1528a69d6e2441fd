"""Where things are kept: candles and labels in ClickHouse
(``clickhouse_store`` over ``clickhouse_client``), job state and telemetry in
Redis (``redis_state``, ``telemetry``), and the bundled redis-server."""
