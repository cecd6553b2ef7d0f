"""Several SBC processes on one machine: ``twistd sbc --workers N`` (docs/scaling.md).

:mod:`sbc.workers.supervisor` runs the worker processes and speaks for the
machine (CLI, metrics, commits); :mod:`sbc.workers.process` is a worker
process; :mod:`sbc.workers.control` is the channel between them.
"""
