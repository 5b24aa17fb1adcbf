"""One console line per event: Hydra's handlers print, nothing else does; under DDP only rank 0.

Lightning attaches its own stream handlers to the `lightning.*` loggers, so under Hydra every
Lightning message appeared twice; faiss logs each CPU-feature probe of its loader; Lightning
advertises a cloud logger on every run. `quiet_console()` runs once Hydra has configured logging.
"""
from __future__ import annotations

import logging
import warnings

# Messages that carry no information for this project's users (exact prefixes).
_DROPPED_PREFIXES = (
    "💡 Tip:",  # Lightning's litlogger / litmodels advertisements
    "Trainer already configured with model summary callbacks",  # we configure RichModelSummary ourselves
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_DROPPED_PREFIXES)


def quiet_console() -> None:
    """Route `lightning.*` through the root (Hydra) handlers only, mute library chatter. Idempotent."""
    import lightning  # noqa: F401  (its import attaches the handlers we remove)

    names = [n for n in list(logging.root.manager.loggerDict) if n == "lightning" or n.startswith("lightning.")]
    for name in ["lightning", "lightning.pytorch", "lightning.fabric", *names]:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
        if not any(isinstance(f, _DropAdverts) for f in lg.filters):
            lg.addFilter(_DropAdverts())
    for h in logging.getLogger().handlers:  # what propagates from any logger passes these
        if not any(isinstance(f, _DropAdverts) for f in h.filters):
            h.addFilter(_DropAdverts())
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:  # DDP: only rank 0 talks on the console (files keep all)
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
    # Emitted by torch from inside Lightning's own code on every fit; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
