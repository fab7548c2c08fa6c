"""The arq worker: `python -m worker` (see __main__.py). Jobs in jobs.py, arq's internals in arq_ext.py."""
