"""Giorgi et al.'s two-stream frame-level anomaly detector (JoWUA 2022): frames (data.py), its training
task (task.py), stage config (config.py), ``run(cfg)`` (train.py) and command line
(``python -m two_stream_detection``)."""
