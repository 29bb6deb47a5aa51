"""Live trace replay: map a production trace onto the service's registry, send it open loop
over HTTP, and report SLO violations, goodput and the latency breakdown (``t2i replay``)."""
