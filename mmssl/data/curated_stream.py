"""``data.curate``: a recipe's per-sample curate filters (caption, image, text quality, language) run on each
raw record of its stream, in the loader workers, before the objective's own transform. A dropped record
becomes a `Skip` counted as ``curate <filter>`` with the stream's other skips, so a run's log says how much
each filter removed; nothing is written."""

from __future__ import annotations

from typing import Any

from mmssl.curate.filter_config import StreamFilters
from mmssl.curate.filters import Language, per_sample_verdict
from mmssl.data.records import record_captions, record_image, record_text
from mmssl.data.streaming import Skip, Transform


class CuratedTransform(Transform):
    """`inner` applied to the records `filters` keep."""

    def __init__(self, inner: Transform, filters: StreamFilters, columns: dict[str, str]):
        self.inner, self.filters, self.columns = inner, filters, dict(columns)
        self._language: Language | None = None

    def __getstate__(self) -> dict[str, Any]:  # loader workers build their own language identifier
        return {**self.__dict__, "_language": None}

    def _text(self, record: dict[str, Any]) -> str | None:
        return record_text(record, self.columns.get("text", "text"))

    def verdict(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(filter, reason) of the first filter that drops `record`, or None."""
        f = self.filters
        captions = record_captions(record, self.columns) if f.caption or f.language else []
        caption = captions[0] if captions else None
        text = self._text(record) if f.text or (f.language and caption is None) else None
        image = None
        if f.image:
            from mmssl.data.images import BadImage, open_image

            source = record_image(record, self.columns)
            try:
                image = open_image(source) if source is not None else None
            except BadImage:
                image = None  # the objective's transform reports an image that does not decode
        if f.language and self._language is None:
            self._language = Language(f.language)
        return per_sample_verdict(f, self._language, caption=caption, text=text, image=image)

    def __call__(self, record: dict[str, Any]) -> list[Any]:
        dropped = self.verdict(record)
        if dropped:
            raise Skip(f"curate {dropped[0]}")
        return self.inner(record)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
