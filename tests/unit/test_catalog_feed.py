"""streams.catalog_feed.CatalogFeed: started once, however often start is called
(the worker's command starts it before faust's start task does)."""

from __future__ import annotations

import threading

from streams.catalog_feed import CatalogFeed


def test_a_second_start_does_nothing() -> None:
    feed = CatalogFeed({"bootstrap.servers": "127.0.0.1:1"}, "templates")
    ran: list[int] = []
    done = threading.Event()

    def run() -> None:  # instead of following a topic
        ran.append(1)
        done.set()

    feed._thread = threading.Thread(target=run, daemon=True)
    feed.start()
    feed.start()
    assert done.wait(5)
    feed._thread.join(5)
    feed.start()  # after the thread ended, too
    assert ran == [1]
