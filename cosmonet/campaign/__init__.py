"""Simulation campaigns: a YAML configuration (:mod:`.config`), the deterministic plan of
its simulations (:mod:`.plan`), the MPI runner that works through it (:mod:`.runner`), and
the store of its output (:mod:`.store`: shards, records, manifest, verification, and the
one reader of a campaign directory). See docs/campaigns.md and docs/data-format.md."""
