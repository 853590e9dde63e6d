"""The instance database: tables, engine, migrations, reads for lifecycle-manage."""
