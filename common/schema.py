"""The pipeline database's schema: the migrations, one list for both backends.

Written in SQLite's types; ``common.storage_pg`` maps them to PostgreSQL's (``pg_ddl``).
``common/storage.py`` applies them (``Storage._migrate``) and describes the tables.
"""

from __future__ import annotations


def add_column(table: str, column: str, sql_type: str, default: str | None = None) -> str:
    """The migration statement of an additive column, the same on both backends (write the
    SQLite type: INTEGER, REAL, TEXT; PostgreSQL gets BIGINT, DOUBLE PRECISION, TEXT)::

        (2, (add_column("deals", "query", "TEXT"),)),
    """
    tail = f" DEFAULT {default}" if default is not None else ""
    return f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}{tail}"


# Each entry upgrades the schema from the previous version; never edit a released entry, add
# one (an additive column: ``add_column`` above). The statements are written in SQLite's types;
# ``common.storage_pg`` maps them to PostgreSQL's (``pg_ddl``), so one list serves both.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS state (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS candidates (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                added_at REAL NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                claim_owner TEXT,
                claim_expires REAL,
                attempts INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (domain, asin)
            )""",
            "CREATE INDEX IF NOT EXISTS candidates_queue ON candidates (domain, added_at)",
            """CREATE TABLE IF NOT EXISTS deals (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                title TEXT,
                price_type INTEGER,
                current INTEGER,
                avg90 INTEGER,
                drop_percent REAL,
                sales_rank INTEGER,
                offers INTEGER,
                profit INTEGER,
                first_seen REAL NOT NULL,
                updated_at REAL NOT NULL,
                refreshes INTEGER NOT NULL DEFAULT 0,
                claim_owner TEXT,
                claim_expires REAL,
                raw TEXT,
                history TEXT,
                PRIMARY KEY (domain, asin)
            )""",
            "CREATE INDEX IF NOT EXISTS deals_staleness ON deals (domain, updated_at)",
            """CREATE TABLE IF NOT EXISTS rejections (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                reason TEXT NOT NULL,
                filter TEXT NOT NULL,
                detail TEXT,
                at REAL NOT NULL,
                times INTEGER NOT NULL DEFAULT 1,
                PRIMARY KEY (domain, asin)
            )""",
            "CREATE INDEX IF NOT EXISTS rejections_reason ON rejections (reason)",
            """CREATE TABLE IF NOT EXISTS seen (
                domain INTEGER NOT NULL,
                asin TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                first_seen REAL NOT NULL,
                last_seen REAL NOT NULL,
                times INTEGER NOT NULL DEFAULT 1,
                PRIMARY KEY (domain, asin)
            )""",
        ),
    ),
    # issue 19 (deal queries): which query found each candidate and deal ('' = before queries).
    (
        2,
        (
            "ALTER TABLE candidates ADD COLUMN query TEXT DEFAULT ''",
            "ALTER TABLE deals ADD COLUMN query TEXT DEFAULT ''",
        ),
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
