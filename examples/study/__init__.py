"""The regulariser study behind examples/regularizer_study.py.

data.py builds the four tasks (data, model, training settings); methods.py is
the table of methods and strength grids; runner.py trains one run and caches
its result; report.py rebuilds the tables and the plot from the cache.
"""
