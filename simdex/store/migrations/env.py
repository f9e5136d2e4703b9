"""Alembic environment: run with the connection simdex.store.engine.migrate() hands over."""
from alembic import context

from simdex.store.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` CLI use: build an engine from the configured URL
    from simdex.store.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()
    if connection.dialect.name == "sqlite":  # outside any transaction, or SQLite ignores it (see revision 0003)
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
