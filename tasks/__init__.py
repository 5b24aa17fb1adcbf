"""Task bodies of the entry points (train.py, evaluate.py, crossval.py, predict.py): the top layer."""
