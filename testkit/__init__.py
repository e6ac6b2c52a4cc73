"""Support code shared by the tests and the benchmarks (not installed with the package): synthetic inputs,
the catalogue of requests a shared endpoint must refuse, and a loopback fault-injection proxy."""
