"""SQL only: tables, engine and migrations, the items and heads repositories, metadata filters compiled to SQL."""
