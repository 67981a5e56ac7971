"""``python -m remote.encode``: the camera command (remote/camera.py does the work)."""
