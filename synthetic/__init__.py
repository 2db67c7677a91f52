"""The synthetic SaaS data the demo, the tests and the benchmarks run on (`skewless generate`)."""
