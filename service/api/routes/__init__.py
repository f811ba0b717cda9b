"""Route modules of the HTTP service: ``pose`` (``POST /pose``), ``health`` (``/healthz``,
``/readyz``) and ``ops`` (``/metrics``, ``/v1/models``)."""
