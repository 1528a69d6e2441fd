"""The body of a job request, shared by POST /jobs and the console's dry run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..jobs.spec import MAX_CHUNK_SIZE, MAX_WORKERS

ParamValue = str | int | float | bool | list[int | float | str]


class JobRequest(BaseModel):
    """The fields of ``gpubackfill start``."""
    model_config = ConfigDict(extra="forbid")

    instrument: str | list[str] = Field(
        min_length=1, max_length=4096, examples=["EURUSD", ["EURUSD", "GBPUSD"], "*"],
        description="one instrument, a list, a comma-separated list, or '*' (every instrument "
                    "in the store at the given granularities)")
    granularity: str | list[str] = Field(min_length=1, max_length=64, examples=["H1", ["M5", "H1"]])
    start_date: str | None = Field(default=None, min_length=1, max_length=64, examples=["2024-01-01"],
                                   description="default: the first candle of the job's series")
    end_date: str | None = Field(default=None, min_length=1, max_length=64, examples=["2024-12-31"],
                                 description="inclusive; default: the last candle of the job's series")
    labels: list[str] | None = Field(default=None, max_length=16,
                                     examples=[["enhanced_triple_barrier", "mfe_mae"]])
    params: dict[str, dict[str, ParamValue]] | None = Field(
        default=None, examples=[{"enhanced_triple_barrier": {"horizon": 48}}])
    chunk_size: int | None = Field(default=None, ge=1, le=MAX_CHUNK_SIZE)
    workers: int | None = Field(default=None, ge=1, le=MAX_WORKERS)
    min_workers: int | None = Field(default=None, ge=1, le=MAX_WORKERS)
    priority: Literal["low", "normal", "high"] = "normal"
    force: bool = False
    backend: Literal["cpu", "cuda", "auto"] | None = None
    source: str | None = Field(default=None, min_length=1, max_length=64,
                               description="a registered source (`gpubackfill source list`); "
                                           "default: the built-in candles table")

    def job_args(self) -> dict[str, Any]:
        """The keyword arguments of ``BackfillService.create_job`` (and ``plan``)."""
        return {"instrument": self.instrument, "granularity": self.granularity,
                "start": self.start_date, "end": self.end_date, "labels": self.labels,
                "params": self.params, "chunk_size": self.chunk_size,
                "workers": self.workers, "priority": self.priority, "force": self.force,
                "backend": self.backend, "min_workers": self.min_workers, "source": self.source}

