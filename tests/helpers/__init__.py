"""Helpers shared by the tests, importable as ``tests.helpers.<module>``.

- ``batches``: hand-made batches in the tasks' contracts (model and engine tests);
- ``data_fixtures``: image/mask writers, a local HTTP server and synthetic roots (data tests);
- ``sweep``: tiny studies and the fault drills the Ray sweep tests drive;
- ``multinode``: the multi-node drills, run as a script in their own process.
"""
