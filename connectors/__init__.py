"""Tables: connectors to SQL databases and files, the read-only SQL guard, and text-to-SQL.

- base.py: the Connector protocol and its plain data (Schema, Table, Column, ResultSet)
- guard.py: `guard()`, one read-only SELECT over the connector's own tables, with a row limit
- sql.py: SqlConnector for SQLite, PostgreSQL and MariaDB/MySQL on read-only connections
- files.py: FileConnector for CSV / Parquet / Excel files (or a folder of them) through DuckDB
- registry.py: `open_connector()` and the persisted ConnectorRegistry the Tables service uses
- registry_store.py: the registry's backend in the shared collection store (replicas), URLs encrypted

Nothing is imported here, so that `ragloom.connectors.base` stays cheap to import.
"""
