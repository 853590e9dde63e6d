"""The lab: what the tests, the benchmarks and the demo share to run the real parts on
this machine. One ``wait_for`` (``lab.waiting``), one pipeline runner (``lab.pipeline``:
the console scripts as processes), RabbitMQ nodes and clusters of one's own
(``lab.rabbit_node``, ``lab.rabbit_cluster``, in network namespaces from ``lab.netlab``,
with certificates from ``lab.certs``), a PostgreSQL primary with a synchronous standby
(``lab.pg_pair``), a TCP forwarder to cut a connection (``lab.forwarder``), wrong clocks
(``lab.fake_clock``) and full disks (``lab.tmpfs``).

Run from the repository's root (pytest's ``pythonpath = .``, ``python -m benchmarks``,
``python -m tools.demo``); not installed with the services (setup.cfg's packages leave
it out). Nothing here imports pytest: tests/support and tests/conftest.py add the
pytest side (fixtures, skipping where a part is missing).
"""
