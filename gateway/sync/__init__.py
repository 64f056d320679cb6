"""Multi-device sync: the write path every feature stores through (`writes`), push and
pull (`service`), their socket handlers and the original REST routes."""
