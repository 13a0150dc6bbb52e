"""The PostgreSQL test server itself: the PostgreSQL store's tests stand on it."""

from __future__ import annotations

import select


def test_the_server_takes_connections_transactions_and_notifications(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as listener, psycopg.connect(postgres_url) as talker:
        assert listener.execute("SELECT current_database(), current_setting('server_version_num')::int / 10000").fetchone() == ("jobctl", 15)
        listener.execute("LISTEN jobctl_test")
        talker.execute("CREATE TABLE t (n int)")
        talker.execute("INSERT INTO t VALUES (1)")
        talker.execute("NOTIFY jobctl_test, 'hello'")
        talker.commit()
        ready, _, _ = select.select([listener.fileno()], [], [], 10)
        assert ready
        [note] = list(listener.notifies(timeout=1, stop_after=1))
        assert (note.channel, note.payload) == ("jobctl_test", "hello")
        assert talker.execute("SELECT sum(n) FROM t").fetchone() == (1,)
