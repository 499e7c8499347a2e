"""Running experiments: the Hydra app (app.py) and the packed launcher's runner, the config
schema and checks, run dirs and their locks, W&B tracking, the host malloc policy of the
command-line entry points."""
