"""What is done to one guest, built from the packages below: ``lifecycle`` (status, stop,
freeze, enable), ``start`` (the checks, the supervisor and its hooks), ``leftovers`` (what a
killed supervisor left), ``create`` (vs-create), ``limits`` (vs-limit, vs-stats), ``netctl``
(vs-net's layers for one guest) and ``templates`` (a busybox root for tests and the demo)."""
