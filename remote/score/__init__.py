"""``python -m remote.score``: the server command (remote/server.py does the work)."""
