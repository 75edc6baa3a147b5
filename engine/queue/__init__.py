"""The prompt queue and its history, persisted in SQLite (WAL) so nothing is lost or run twice on a crash.
"""
