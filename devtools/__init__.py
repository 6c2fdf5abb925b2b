"""Developer tools: the local stack (``make up``, ``make demo``), its supervisor, dev certificates, the flag docs.

Nothing here runs in a service: the runtime package :mod:`reprise` and the three
service packages never import it, ``pyproject.toml`` does not package it, and
the images do not copy it (their .dockerignore files send only what they copy).
Run these from the repository root (``python -m devtools.devstack up``), as the
Makefile, the benchmarks and the tests do.
"""
