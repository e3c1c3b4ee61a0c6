"""On-disk translation cache: one sqlite3 file, keyed by sha256 of (model fingerprint, languages,
generation settings, text), so a second or resumed run translates nothing it has translated before.

sqlite3 (standard library) gives atomic commits: a run killed mid-way keeps every batch it committed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path


def cache_key(text: str, setting: str) -> str:
    return hashlib.sha256(f"{setting}\x1e{text}".encode()).hexdigest()


def setting_key(**parts: object) -> str:
    """A canonical string of everything that changes a translation (model fingerprint, languages, generation)."""
    return json.dumps(parts, sort_keys=True, default=str)


class TranslationCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS translations (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, text FROM translations WHERE key IN ({marks})", chunk))
        self.hits += len(found)
        self.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[str, str]) -> None:
        if not items:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO translations (key, text) VALUES (?, ?)", items.items())
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class NoCache:
    """Stands in for a cache when caching is off."""

    hits = 0
    misses = 0

    def get_many(self, keys: list[str]) -> dict[str, str]:
        return {}

    def put_many(self, items: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass


def fingerprint_model(path: str) -> str:
    """Identify a model: local folder → path + sha256 of config + weight file sizes; Hub id → the id."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"hub:{path}"
    h = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.is_file()):
        f = folder / name
        if name.endswith((".json", ".txt", ".model", ".spm")) and f.stat().st_size < 50_000_000:
            h.update(name.encode() + b"\0" + f.read_bytes())
        else:
            h.update(f"{name}\0{f.stat().st_size}\0{int(f.stat().st_mtime)}".encode())
    return f"dir:{folder.resolve()}:{h.hexdigest()[:16]}"
