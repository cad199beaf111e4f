"""A small thread-safe LRU map for compiled constraints (keyed by a spec's digest)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """`get(key, build)`: the cached value, or `build()` stored under `key`, the least recently
    used entries beyond `size` dropped. `build` runs outside the lock: two threads that miss at
    once both build, and the second result wins (builds are pure)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: "OrderedDict[Hashable, V]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        value = build()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
