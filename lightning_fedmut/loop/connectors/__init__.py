"""The loop's connectors, each the owner of the state it writes (Lightning's ``trainer/connectors``).

- ``checkpoint``: federated checkpoints, ``history.jsonl``, ``last.ckpt``, the resume fingerprint and the lock;
- ``signals``: Ctrl+C and SIGTERM during a fit (what is pending, what is saved, the exit code);
- ``failures``: failed clients and rounds, systematic failures, the fit's guard;
- ``logger``: a round's row, its timings, the progress line and the per-client table;
- ``tracking``: the tracker's run (W&B or another Lightning logger): start, resume, finish.
"""
