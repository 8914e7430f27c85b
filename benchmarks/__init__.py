"""``bilevel bench``: the benchmark driver (:mod:`.bench`) and the hand-written torch references it times the
library against (:mod:`.references`). Installed with the library as ``bilevel_benchmarks``, so the command works
from a wheel as well as from a checkout (docs/benchmarks.md)."""
