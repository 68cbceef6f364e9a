"""journeymap: customer journeys from raw web logs."""

import os

__version__ = "0.1.0"

# Polars' allocator (jemalloc) gives memory back to the system half a second after it is
# freed, and journeymap, working partition after partition of the same size, asks for it
# again at once: a fifth to a quarter of a run's CPU time was system time. Kept five
# seconds, freed memory is reused (10M events: the bench's core 9 % faster with a peak of
# 1.25 GB instead of 1.0 GB, the run 7 % faster; see README, Performance). Polars reads the
# variable when it is first imported, so this applies where journeymap is imported first, as
# its CLI is.
ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
KEEP_FREED_MEMORY = "dirty_decay_ms:5000"
# What Polars writes into the variable before a user's own options when it is imported: a
# process started from a Python process that imported Polars inherits it, and it is not a
# choice of the user's.
POLARS_ALLOCATOR_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"


def allocator_setting(inherited: str) -> str:
    """The allocator options journeymap runs with: the user's own, with `KEEP_FREED_MEMORY`
    after them unless they choose a decay themselves (jemalloc takes the last of repeated
    options, and Polars puts its default before the variable's value)."""
    own = inherited
    while own.startswith(POLARS_ALLOCATOR_DEFAULT):
        own = own.removeprefix(POLARS_ALLOCATOR_DEFAULT).removeprefix(",")
    if "dirty_decay_ms" in own:
        return own
    return f"{own},{KEEP_FREED_MEMORY}" if own else KEEP_FREED_MEMORY


os.environ[ALLOCATOR_ENV] = allocator_setting(os.environ.get(ALLOCATOR_ENV, ""))
