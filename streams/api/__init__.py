"""The render API: its own process beside each worker (server), the worker's
side that keeps it informed (routing, link, tables), its load shedding, and
the live operator page it serves (ops_page, ops_feed)."""
