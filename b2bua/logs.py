"""structlog set up for JSON lines on stdout.

How this works: one call at start-up configures structlog to render each event as a JSON object
with a timestamp and level; modules log through `get_logger()` and bind context such as `call_id`.
Filtering by level happens before rendering, so a debug line costs almost nothing at INFO. Both
daemons of this distribution (the B2BUA and rtp_relay) log through this module.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "b2bua", **context: Any) -> Any:
    return structlog.get_logger(name).bind(**context)
