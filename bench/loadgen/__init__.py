"""A ghz-compatible gRPC load generator on grpc.aio.

ghz cannot be installed on our machines, so ``bench/load.py`` reads ghz's JSON
config files (``deploy/ghz/*.json``), drives the service the way ghz does
(round-robin over the ``data`` array, ``concurrency`` workers spread over
``connections`` channels, optional ``rps`` pacing, ``skipFirst`` warm-up,
``count-errors``) and writes ghz's JSON report format, plus a few Reprise
extras under the ``reprise`` key (cache status per request and per pass
through the data, client CPU) and a PNG latency plot.

Modules: :mod:`.config` (parse a ghz config), :mod:`.templates` (ghz call-data
templates), :mod:`.rpc` (method lookup by server reflection), :mod:`.runner`
(the asyncio workers), :mod:`.procs` (one load from several client processes,
for ``make bench-gateway``), :mod:`.report` (ghz report), :mod:`.plot` (PNG).
"""
