"""Database configuration: the engine's string keys (the same in every language)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Union

from . import _laminardb


@dataclass
class LaminarConfig:
    """Settings for :func:`laminardb.open`. Every field maps to the engine key of the same name;
    ``None`` keeps the engine default. ``extra`` passes any other key as a string.

    Durations accept seconds as numbers or strings with units (``"5s"``, ``"250ms"``); sizes accept
    bytes or strings (``"512MB"``).
    """

    # 65536 (the established package's default) leaves the engine's own default (1024
    # batches a subscription buffers); any other value is passed on.
    buffer_size: Optional[int] = 65536
    storage_dir: Optional[str] = None
    checkpoint_interval_ms: Optional[int] = None
    checkpoint_interval: Optional[Union[str, float]] = None
    durability: Optional[str] = None
    checkpoints_retained: Optional[int] = None
    io_backend: Optional[str] = None
    wal_recovery: Optional[str] = None
    state_backend: Optional[str] = None
    state_cache_size: Optional[Union[str, int]] = None
    workers: Optional[int] = None
    memory_limit: Optional[Union[str, int]] = None
    idle_timeout: Optional[Union[str, float]] = None
    queue_capacity: Optional[int] = None
    queue_full: Optional[str] = None
    on_full: Optional[str] = None
    source_retention: Optional[int] = None
    # "127.0.0.1:9464": serve the Prometheus text exposition at GET /metrics while the
    # connection is open. None: no endpoint (metrics_text() still works).
    metrics_addr: Optional[str] = None
    # Group mode: a directory every member of the KAFKA sources' consumer group reaches, where
    # each partition's state lives; the connection runs the partitions Kafka assigns it.
    shared_dir: Optional[str] = None
    extra: Dict[str, str] = field(default_factory=dict)

    def to_pairs(self) -> list:
        pairs = []
        for name in (
            "storage_dir", "durability", "checkpoint_interval", "checkpoint_interval_ms", "checkpoints_retained", "io_backend", "wal_recovery",
            "state_backend", "state_cache_size", "workers",
            "memory_limit", "buffer_size", "idle_timeout", "queue_capacity", "queue_full", "on_full",
            "source_retention", "metrics_addr", "shared_dir",
        ):
            v = getattr(self, name)
            if v is None or (name == "buffer_size" and v == 65536):
                continue
            if name in ("checkpoint_interval", "idle_timeout") and isinstance(v, (int, float)):
                v = f"{int(v * 1000)}ms"
            pairs.append((name, str(v)))
        pairs.extend((k, str(v)) for k, v in self.extra.items())
        return pairs

    @staticmethod
    def keys() -> Dict[str, str]:
        """Every key the engine knows, with its description."""
        return dict(_laminardb.config_keys())


Config = LaminarConfig


def to_pairs(config) -> list:
    if config is None:
        return []
    if isinstance(config, LaminarConfig):
        return config.to_pairs()
    if isinstance(config, dict):
        return LaminarConfig(extra={k: str(v) for k, v in config.items()}).to_pairs()
    raise TypeError(f"config must be a LaminarConfig or a dict, not {type(config).__name__}")
