"""What the agent says about each model it holds or works on, as it will be reported."""

from __future__ import annotations

import time
from dataclasses import dataclass

from modelcache.contract.agent_wire import ModelReport, ModelState
from modelcache.contract.objects import now_rfc3339

_RATE_WINDOW = 1.0  # seconds of progress the reported rate is measured over


@dataclass(slots=True)
class ModelStatus:
    storage_key: str
    state: ModelState = "ModelDownloadPending"
    bytes_done: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    reason: str = ""
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    _rate_mark: tuple[float, int] = (0.0, 0)

    def pending(self, reason: str = "", message: str = "") -> None:
        self.state, self.reason, self.message = "ModelDownloadPending", reason, message
        self.rate, self.finished_at = 0.0, None

    def downloading(self, reason: str = "", message: str = "") -> None:
        if self.state != "ModelDownloading" or self.started_at is None:
            self.started_at = now_rfc3339()
            self._rate_mark = (time.monotonic(), self.bytes_done)
        self.state, self.reason, self.message = "ModelDownloading", reason, message
        self.finished_at = None

    def progressed(self, done: int, total: int) -> None:
        self.bytes_done, self.bytes_total = done, total
        now = time.monotonic()
        mark_time, mark_bytes = self._rate_mark
        if now - mark_time >= _RATE_WINDOW:
            self.rate = max(0.0, (done - mark_bytes) / (now - mark_time))
            self._rate_mark = (now, done)

    def downloaded(self, total: int, finished_at: str | None = None) -> None:
        self.state, self.reason, self.message, self.rate = "ModelDownloaded", "", "", 0.0
        self.bytes_done = self.bytes_total = total
        self.finished_at = finished_at or now_rfc3339()

    def failed(self, reason: str, message: str) -> None:
        self.state, self.reason, self.message = "ModelDownloadError", reason, message
        self.rate, self.finished_at = 0.0, now_rfc3339()

    def report(self) -> ModelReport:
        return ModelReport(
            storage_key=self.storage_key,
            state=self.state,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            rate=round(self.rate, 1),
            reason=self.reason,
            message=self.message,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )
