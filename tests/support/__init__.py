"""What the tests and the benchmarks (bench/) share, apart from pytest's fixtures
(tests/conftest.py): a real ``compacs serve`` process and its configuration (node.py),
DICOM clients and servers to talk to it (scu.py, dcmtk.py, destination.py, retrieve.py,
latency.py, orthanc.py, proxy.py, servers.py), the public test files (dicomfiles.py),
what a node stored and queued (stored.py, forwarding.py, scaleout.py, records.py,
in_process.py), and what its processes did (procfs.py, strace.py).

No test module imports another test module: a helper two of them need lives here."""
